# ddms, built from this checkout.
#
# The source is the part of the tree the build and the unit tests read (`sourceFiles` in
# ./lib.nix), not the whole flake: editing docs, deployment tooling or integration tests leaves
# the derivation, and so the build, as it was. For the same reason the git commit is not
# embedded by default (`ddms --version` and /api/version then say `unknown`): a commit hash
# changes with every commit, docs-only ones included. Pass `gitSha` to embed one, e.g.
# `ddms.packages.<system>.ddms.override { gitSha = ddms.shortRev; }` (nix/README.md).
{ lib, rustPlatform, rustc, gitSha ? null }:

let
  workspace = (lib.importTOML ../Cargo.toml).workspace.package;
  fs = lib.fileset;
in
# A clear message instead of a compile error deep in a dependency on an older channel.
assert lib.assertMsg (lib.versionAtLeast rustc.version workspace.rust-version)
  "ddms needs Rust >= ${workspace.rust-version} (nixpkgs has ${rustc.version}): use nixos-26.05 or newer";

rustPlatform.buildRustPackage {
  pname = "ddms";
  inherit (workspace) version;
  src = fs.toSource {
    root = ../.;
    fileset = fs.unions (map (path: ../. + "/${path}") (import ./lib.nix).sourceFiles);
  };
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "--package" "ddms" ];
  # The library's unit tests (`cargo test --package ddms --lib`): they need no network,
  # database or broker — loopback sockets, `localhost` (the sandbox's /etc/hosts), temp files,
  # `sh` and `sleep` at most. The integration tests (app/tests) need PostgreSQL, Mosquitto and
  # Docker; CI runs them.
  cargoTestFlags = [ "--package" "ddms" "--lib" ];
  # app/build.rs embeds this; without it, build.rs asks git, which the sandbox lacks.
  env.BUILD_GIT_SHA = if gitSha == null then "unknown" else gitSha;
  meta = {
    description = "Device data monitoring system: Modbus TCP and MQTT ingestion, storage, dashboard";
    license = lib.licenses.asl20;
    mainProgram = "ddms";
    platforms = lib.platforms.linux;
  };
}
