//! The fleet tasks' flags (deploy, rollback, status, history, provision) and their checks.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use clap::Args;

use crate::deploy;

/// Which environment and which of its hosts: shared by deploy, rollback, status and history.
#[derive(Debug, Args)]
pub struct Fleet {
    /// The environment: ansible/inventories/ENV/hosts.yml, else terraform/envs/ENV.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// An Ansible inventory to read instead (through `ansible-inventory --list`, so
    /// group_vars and host_vars apply).
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// Only these hosts of group `ddms`: inventory names, comma-separated or repeated.
    #[arg(
        long,
        visible_alias = "limit",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    hosts: Vec<String>,
}

/// How a run that changes hosts proceeds and reports.
#[derive(Debug, Args)]
pub struct Run {
    /// Hosts changed at once; the next batch starts only when this one passed.
    #[arg(long, value_name = "N", default_value_t = 1)]
    batch: usize,
    /// Where the JSON report goes [default: target/deploy/ENV-COMMAND-TIME.json].
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print the plan (hosts, current → new release, gates, batches) and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    fleet: Fleet,
    #[command(flatten)]
    run: Run,
    /// The version to ship: target/dist/ddms-VERSION-<arch>-linux.tar.gz from `cargo xtask
    /// build` (default: build one now).
    #[arg(long, value_name = "V")]
    version: Option<String>,
    /// The tarball to ship, with PATH.sha256 beside it.
    #[arg(long, value_name = "PATH")]
    artifact: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    fleet: Fleet,
    #[command(flatten)]
    run: Run,
    /// Every host to this installed release (which must have been live there before),
    /// instead of each host's previous known-good one.
    #[arg(long, value_name = "VERSION")]
    to: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    fleet: Fleet,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    fleet: Fleet,
    /// The newest N records of each host.
    #[arg(long, value_name = "N", default_value_t = deploy::history::DEFAULT_LAST)]
    last: usize,
    /// One JSON record a line (the hosts' own records, with `inventory_host`) instead of a
    /// table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The environment: terraform/envs/ENV, ansible/inventories/ENV.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// An Ansible inventory to provision instead of Terraform's hosts.
    #[arg(long, value_name = "FILE")]
    inventory: Option<PathBuf>,
    /// Pass -auto-approve to terraform apply.
    #[arg(long)]
    auto_approve: bool,
    /// Use this `terraform output -json` instead of running terraform (outputs saved
    /// elsewhere, or a stand-in fleet).
    #[arg(long, value_name = "FILE", conflicts_with = "inventory")]
    from_output: Option<PathBuf>,
    /// Where the generated inventory goes (default ansible/inventories/ENV).
    #[arg(long, value_name = "DIR", conflicts_with = "inventory")]
    out: Option<PathBuf>,
    /// Seconds to wait for ssh and cloud-init on every host, in all.
    #[arg(long, value_name = "S", default_value_t = 900)]
    cloud_init_timeout: u64,
    /// Further arguments for ansible-playbook, after `--`.
    #[arg(last = true, value_name = "ANSIBLE-PLAYBOOK-ARGS")]
    playbook_args: Vec<String>,
}

impl Fleet {
    fn options(&self) -> Result<deploy::Options> {
        let options = deploy::Options {
            env: self.env.clone(),
            inventory: self.inventory.clone(),
            hosts: self.hosts.clone(),
            batch: 1,
            ..deploy::Options::default()
        };
        deploy::validate(&options)?;
        Ok(options)
    }
}

impl Run {
    fn apply(&self, options: &mut deploy::Options) -> Result<()> {
        ensure!(self.batch >= 1, "--batch must be at least 1");
        options.batch = self.batch;
        options.report = self.report.clone();
        options.dry_run = self.dry_run;
        Ok(())
    }
}

impl DeployArgs {
    pub fn options(&self) -> Result<deploy::Options> {
        let mut options = self.fleet.options()?;
        self.run.apply(&mut options)?;
        options.version = self.version.clone();
        options.artifact = self.artifact.clone();
        Ok(options)
    }
}

impl RollbackArgs {
    pub fn options(&self) -> Result<deploy::Options> {
        let mut options = self.fleet.options()?;
        self.run.apply(&mut options)?;
        options.to = self.to.clone();
        if let Some(to) = &options.to {
            ensure!(
                deploy::valid_release_name(to),
                "--to `{}`: a release name holds only letters, digits, '.', '_', '-' and '+' \
                 and does not start with '.' or '-'",
                to.escape_debug()
            );
        }
        Ok(options)
    }
}

impl StatusArgs {
    pub fn options(&self) -> Result<deploy::Options> {
        self.fleet.options()
    }
}

impl HistoryArgs {
    pub fn options(&self) -> Result<(deploy::Options, usize, bool)> {
        ensure!(self.last >= 1, "--last must be at least 1");
        Ok((self.fleet.options()?, self.last, self.json))
    }
}

impl ProvisionArgs {
    pub fn options(&self) -> Result<deploy::Options> {
        let options = deploy::Options {
            env: self.env.clone(),
            inventory: self.inventory.clone(),
            batch: 1,
            auto_approve: self.auto_approve,
            playbook_args: self.playbook_args.clone(),
            from_output: self.from_output.clone(),
            out: self.out.clone(),
            cloud_init_timeout: self.cloud_init_timeout,
            ..deploy::Options::default()
        };
        deploy::validate(&options)?;
        Ok(options)
    }
}
