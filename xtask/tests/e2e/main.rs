//! End-to-end tests on Debian hosts in Docker containers, driven like real hosts: over ssh,
//! by `ansible-playbook` and `ddms release`. Every test here needs Docker (and the images
//! `cargo xtask images` builds), so every name contains `container`: `cargo xtask test` skips
//! them loudly when no engine answers.

mod support;

mod bare_debian;
mod container_image;
mod deploy_playbook;
mod harness;
mod provision;
mod provision_rds;
mod provision_single_host;
mod provision_terraform;
mod systemd;

mod deploy;
mod deploy_cli;
mod deploy_upload;
mod fleet;
mod traffic;
