# ddms, built from this checkout. The git sha comes from the flake (no .git in the Nix store).
{ lib, rustPlatform, rustc, src, gitSha ? "unknown" }:

let
  workspace = (lib.importTOML ../Cargo.toml).workspace.package;
in
# A clear message instead of a compile error deep in a dependency on an older channel.
assert lib.assertMsg (lib.versionAtLeast rustc.version workspace.rust-version)
  "ddms needs Rust >= ${workspace.rust-version} (nixpkgs has ${rustc.version}): use nixos-26.05 or newer";

rustPlatform.buildRustPackage {
  pname = "ddms";
  inherit (workspace) version;
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "--package" "ddms" ];
  # The integration tests need PostgreSQL, Docker and network ports; CI runs them.
  doCheck = false;
  env.BUILD_GIT_SHA = gitSha;
  meta = {
    description = "Device data monitoring system: Modbus TCP and MQTT ingestion, storage, dashboard";
    license = lib.licenses.asl20;
    mainProgram = "ddms";
    platforms = lib.platforms.linux;
  };
}
