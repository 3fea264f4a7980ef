//! The ddms role's database task (`ansible/roles/ddms/tasks/database_role.yml`) run for real:
//! `ansible-playbook -c local` against a throwaway PostgreSQL 15 whose `ddms` is an RDS-like
//! master (LOGIN CREATEROLE CREATEDB, no superuser) that owns the database and, as an RDS fleet
//! from before ddms had a role of its own, every table ddms migrated. The task must leave ddms
//! a least-privilege role that owns the database and those tables, enough for `ddms migrate`;
//! a second run and `--check` change nothing; a new password is applied and the old refused.
//! Needs PostgreSQL 15, ansible-playbook and the `ddms` binary (built when missing), as
//! `cargo xtask setup` provides: without them it fails and says so.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use super::fleet::RDS_DDMS_ROLE;
use crate::schema_compat::ddms_binary;
use crate::schema_compat::services::{Ddms, Postgres};

/// Terraform's default master user name, as on an RDS instance it made.
const MASTER: &str = "ddms";
const MASTER_PASSWORD: &str = "master-password-1";
const PASSWORD: &str = "ddms-own-password-1";
const NEW_PASSWORD: &str = "ddms-own-password-2";

struct Recap {
    changed: u32,
    output: String,
}

/// What the superuser sees: `sql`'s rows, `|`-separated, one a line.
fn superuser(postgres: &Postgres, database: &str, sql: &str) -> Result<String> {
    output(postgres.client("postgres", "", database).args(["-c", sql]))
}

fn output(command: &mut Command) -> Result<String> {
    let out = command.output().context("run psql")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Runs the task file with `vars` through a playbook on localhost, as site.yml runs it on the
/// first ddms host (the role's defaults loaded as its own; not `include_role`, which would run
/// the `common` role it depends on against this machine).
fn playbook(dir: &Path, postgres: &Postgres, vars: &Value, check: bool) -> Result<Recap> {
    let ansible = crate::project_root().join("ansible");
    let play = json!([{
        "name": "ddms' database role, as the ddms role makes it",
        "hosts": "localhost",
        "gather_facts": false,
        "vars_files": [ansible.join("roles/ddms/defaults/main.yml")],
        "tasks": [{
            "name": "Make ddms' own database role",
            "ansible.builtin.include_tasks": ansible.join("roles/ddms/tasks/database_role.yml"),
        }],
    }]);
    std::fs::write(dir.join("play.yml"), play.to_string())?;
    let extra = dir.join("vars.json");
    std::fs::write(&extra, vars.to_string())?;
    let path = format!(
        "{}:{}",
        postgres.bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("ansible-playbook")
        .args(["-c", "local", "-i", "localhost,"])
        .args([
            "-e",
            "ansible_python_interpreter={{ ansible_playbook_python }}",
        ])
        .arg("-e")
        .arg(format!("@{}", extra.display()))
        .args(check.then_some("--check"))
        .arg(dir.join("play.yml"))
        .env("ANSIBLE_CONFIG", ansible.join("ansible.cfg"))
        .env("ANSIBLE_HOME", dir.join("ansible-home"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("PATH", path)
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run ansible-playbook ({e}): this test needs it \
                 (ansible-core; `cargo xtask setup` installs it)"
            )
        })?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "ansible-playbook failed:\n{output}");
    for secret in [MASTER_PASSWORD, PASSWORD, NEW_PASSWORD] {
        ensure!(
            !output.contains(secret),
            "ansible-playbook printed a password:\n{output}"
        );
    }
    let recap = output
        .lines()
        .find(|line| line.starts_with("localhost") && line.contains("changed="))
        .with_context(|| format!("no play recap:\n{output}"))?;
    let changed = recap
        .split_whitespace()
        .find_map(|field| field.strip_prefix("changed="))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no changed= in `{recap}`"))?;
    Ok(Recap { changed, output })
}

/// The newest day partition of `readings` (ddms creates them days ahead).
fn newest_partition(postgres: &Postgres) -> Result<String> {
    superuser(
        postgres,
        "ddms",
        "SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'readings'::regclass \
         AND inhrelid::regclass::text <> 'readings_default' ORDER BY 1 DESC LIMIT 1",
    )
}

#[test]
fn the_database_role_task_gives_ddms_a_least_privilege_role_owning_its_database() {
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}

fn run() -> Result<()> {
    let ddms = ddms_binary::ddms_binary()?;
    // Removed when dropped, after the cluster in it (declared later, dropped first) stops.
    let dir = tempfile::Builder::new()
        .prefix("ddms-database-role-")
        .tempdir()?;
    let postgres = Postgres::start(&dir.path().join("postgres"))?;

    // RDS's layout: a master with CREATEROLE and CREATEDB but no superuser, owning the
    // database; another database and a schema of the master's own, which are not ddms'.
    // (One statement each: CREATE DATABASE cannot share psql's -c transaction.)
    for sql in [
        format!("CREATE ROLE {MASTER} LOGIN CREATEROLE CREATEDB PASSWORD '{MASTER_PASSWORD}'"),
        format!("CREATE DATABASE ddms OWNER {MASTER}"),
        format!("CREATE DATABASE other OWNER {MASTER}"),
    ] {
        postgres.psql("postgres", &sql)?;
    }
    postgres.require_passwords(MASTER)?;
    output(postgres.client(MASTER, MASTER_PASSWORD, "ddms").args([
        "-c",
        "CREATE SCHEMA admin_only; CREATE TABLE admin_only.notes (note text)",
    ]))?;
    // The fleet before: ddms connected as the master, so its tables are the master's.
    let url = |user: &str, password: &str| {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/ddms",
            postgres.port()
        )
    };
    let ddms_as = |user: &str, password: &str| Ddms {
        label: user.to_string(),
        binary: ddms.to_path_buf(),
        dir: dir.path().to_path_buf(),
        database_url: url(user, password),
        provisioning_token: String::new(),
    };
    ddms_as(MASTER, MASTER_PASSWORD).run(&["migrate"], "")?;
    let tables = "SELECT count(*) FILTER (WHERE relowner = to_regrole('{owner}')) || '/' || count(*) \
                  FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')";
    let master_tables = superuser(&postgres, "ddms", &tables.replace("{owner}", MASTER))?;
    let (owned, all) = master_tables.split_once('/').context("count")?;
    ensure!(
        owned == all && all.parse::<u32>()? > 5,
        "after `ddms migrate` as the master it should own every table: {master_tables}"
    );

    let mut vars = json!({
        "ddms_database_admin_url": url(MASTER, MASTER_PASSWORD),
        "ddms_database_user": RDS_DDMS_ROLE,
        "ddms_database_password": PASSWORD,
        "ddms_database_name": "ddms",
        // psql is there (the cluster's); nothing is installed on this machine.
        "ddms_database_client_packages": [],
    });
    let first = playbook(dir.path(), &postgres, &vars, false)?;
    ensure!(
        first.changed > 0,
        "the first run changed nothing:\n{}",
        first.output
    );

    let role = superuser(
        &postgres,
        "postgres",
        &format!(
            "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, \
             (SELECT count(*) FROM pg_auth_members WHERE member = r.oid) \
             FROM pg_roles r WHERE rolname = '{RDS_DDMS_ROLE}'"
        ),
    )?;
    ensure!(
        role == "t|f|f|f|f|f|0",
        "{RDS_DDMS_ROLE}: LOGIN and nothing else expected (login|super|createrole|createdb|\
         replication|bypassrls|memberships): {role}"
    );
    let owners = superuser(
        &postgres,
        "postgres",
        "SELECT datname || ':' || datdba::regrole FROM pg_database \
         WHERE datname IN ('ddms', 'other') ORDER BY 1",
    )?;
    ensure!(
        owners == format!("ddms:{RDS_DDMS_ROLE}\nother:{MASTER}"),
        "database owners: {owners}"
    );
    let role_tables = superuser(&postgres, "ddms", &tables.replace("{owner}", RDS_DDMS_ROLE))?;
    ensure!(
        role_tables == master_tables,
        "every table the master owned in public should be {RDS_DDMS_ROLE}'s now: {role_tables} \
         (before: {master_tables})"
    );
    let notes = superuser(
        &postgres,
        "ddms",
        "SELECT relowner::regrole FROM pg_class WHERE oid = 'admin_only.notes'::regclass",
    )?;
    ensure!(
        notes == MASTER,
        "the master's own table outside public moved to {notes}"
    );

    // What ddms does with it: its migrations (a partition dropped and made again: DROP needs
    // ownership, ATTACH ownership of `readings`), a table of its own; never a role.
    let partition = newest_partition(&postgres)?;
    output(
        postgres
            .client(RDS_DDMS_ROLE, PASSWORD, "ddms")
            .args(["-c", &format!("DROP TABLE {partition}")]),
    )?;
    ddms_as(RDS_DDMS_ROLE, PASSWORD).run(&["migrate"], "")?;
    ensure!(
        newest_partition(&postgres)? == partition,
        "`ddms migrate` as {RDS_DDMS_ROLE} did not make {partition} again"
    );
    output(
        postgres
            .client(RDS_DDMS_ROLE, PASSWORD, "ddms")
            .args(["-c", "CREATE TABLE public.probe (x int); DROP TABLE probe"]),
    )?;
    let refused = postgres
        .client(RDS_DDMS_ROLE, PASSWORD, "ddms")
        .args(["-c", "CREATE ROLE intruder"])
        .output()?;
    ensure!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("permission denied"),
        "{RDS_DDMS_ROLE} could create a role: {}",
        String::from_utf8_lossy(&refused.stderr)
    );

    for check in [false, true] {
        let again = playbook(dir.path(), &postgres, &vars, check)?;
        ensure!(
            again.changed == 0,
            "a second run{} changed something:\n{}",
            if check { " with --check" } else { "" },
            again.output
        );
    }

    vars["ddms_database_password"] = json!(NEW_PASSWORD);
    let rotated = playbook(dir.path(), &postgres, &vars, false)?;
    ensure!(
        rotated.changed == 1,
        "a new password should be one change:\n{}",
        rotated.output
    );
    output(
        postgres
            .client(RDS_DDMS_ROLE, NEW_PASSWORD, "ddms")
            .args(["-c", "SELECT 1"]),
    )
    .context("the new password")?;
    let old = postgres
        .client(RDS_DDMS_ROLE, PASSWORD, "ddms")
        .args(["-c", "SELECT 1"])
        .output()?;
    ensure!(!old.status.success(), "the old password still logs in");
    Ok(())
}
