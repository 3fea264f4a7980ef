# ddms, built from this checkout. The git sha comes from the flake (no .git in the Nix store).
{ lib, rustPlatform, src, gitSha ? "unknown" }:

rustPlatform.buildRustPackage {
  pname = "ddms";
  version = (lib.importTOML ../Cargo.toml).workspace.package.version;
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
