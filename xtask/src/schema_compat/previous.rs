//! Which release is "the previous one", and its `ddms` binary built from its own tree.
//!
//! The rule, in order (docs/testing.md):
//! 1. `--previous REV` or `DDMS_SCHEMA_PREVIOUS=REV`: any commit-ish git knows;
//! 2. migrations added in the work tree and not committed yet: `HEAD` (the committed schema is
//!    N-1);
//! 3. the newest `v*` tag reachable from `HEAD^` (so a tagged commit is compared with the tag
//!    before it);
//! 4. without such a tag: the first parent of the newest commit that added a migration file —
//!    the last commit on the schema before the newest one.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

/// The environment variable that names the previous release instead of the rule.
pub const PREVIOUS_ENV: &str = "DDMS_SCHEMA_PREVIOUS";

const MIGRATIONS: [&str; 2] = ["migrations/postgres", "migrations/sqlite"];

/// The chosen commit and why it was chosen.
pub struct Previous {
    pub commit: String,
    pub reason: String,
}

impl Previous {
    /// The 12-digit prefix `ddms --version` shows.
    pub fn short(&self) -> &str {
        &self.commit[..12]
    }
}

pub fn choose(sh: &Shell, given: Option<&str>) -> Result<Previous> {
    if cmd!(sh, "git rev-parse --is-shallow-repository")
        .quiet()
        .read()?
        == "true"
    {
        bail!(
            "this clone is shallow: the previous release's tree is not in it. Fetch the history \
             (`git fetch --unshallow`, or `fetch-depth: 0` for actions/checkout), or name a \
             commit that is present with --previous / {PREVIOUS_ENV}"
        );
    }
    if let Some(rev) = given.filter(|r| !r.trim().is_empty()) {
        return Ok(Previous {
            commit: resolve(sh, rev)?,
            reason: format!("given ({rev})"),
        });
    }
    let uncommitted = cmd!(
        sh,
        "git status --porcelain --untracked-files=all -- {MIGRATIONS...}"
    )
    .quiet()
    .read()?;
    let added: Vec<&str> = uncommitted
        .lines()
        .filter(|l| l.starts_with("??") || l.starts_with('A'))
        .collect();
    if !added.is_empty() {
        return Ok(Previous {
            commit: resolve(sh, "HEAD")?,
            reason: format!("HEAD: the work tree adds migrations ({})", added.join(", ")),
        });
    }
    let tag = cmd!(sh, "git describe --tags --abbrev=0 --match v* HEAD^")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
        .filter(|t| !t.is_empty());
    if let Some(tag) = tag {
        return Ok(Previous {
            commit: resolve(sh, &tag)?,
            reason: format!("the newest release tag before HEAD ({tag})"),
        });
    }
    let newest = cmd!(
        sh,
        "git log -1 --format=%H --diff-filter=A HEAD -- {MIGRATIONS...}"
    )
    .quiet()
    .read()?;
    ensure!(!newest.is_empty(), "no commit added a migration");
    let commit = resolve(sh, &format!("{newest}^"))
        .with_context(|| format!("{newest} added the first migrations: there is no N-1"))?;
    Ok(Previous {
        commit,
        reason: format!(
            "no v* tag: the parent of {}, the newest commit that added a migration",
            &newest[..12]
        ),
    })
}

fn resolve(sh: &Shell, rev: &str) -> Result<String> {
    let spec = format!("{rev}^{{commit}}");
    cmd!(sh, "git rev-parse --verify --quiet {spec}")
        .quiet()
        .read()
        .ok()
        .filter(|c| c.len() == 40)
        .with_context(|| format!("`{rev}` is not a commit of this repository"))
}

/// Builds `previous`'s `ddms` (debug) and returns a copy of it under `work`.
///
/// The tree goes to `work/tree-<commit>` with `git archive` and stays there, so a later run
/// for the same commit finds it unchanged and cargo rebuilds nothing; the trees of earlier
/// previous releases are removed. It builds into a target directory of its own,
/// `work/target`: cargo names a workspace's own crates by their path relative to the
/// workspace root, so two trees' `ddms` crates are one unit in one target directory, each
/// build taking over the other's artifacts and fingerprints (shared with the new tree, every
/// run recompiled both; seen here: the new tree went on running the previous tree's build
/// script). For the same reason the previous releases share `work/target` only for their
/// dependencies: when the commit differs from the one built last, `ddms`'s own artifacts are
/// cleaned first, so nothing of another tree's `ddms` can pass for this one.
pub fn build(sh: &Shell, previous: &Previous, work: &Path) -> Result<PathBuf> {
    let short = previous.short();
    let tree = work.join(format!("tree-{short}"));
    let extracted = tree.join(".ddms-schema-compat-extracted");
    if !extracted.is_file() {
        sh.remove_path(&tree)?;
        sh.create_dir(&tree)?;
        let archive = work.join(format!("tree-{short}.tar"));
        let commit = &previous.commit;
        cmd!(sh, "git archive --format=tar -o {archive} {commit}")
            .quiet()
            .run()?;
        cmd!(sh, "tar -xf {archive} -C {tree}").quiet().run()?;
        sh.remove_path(&archive)?;
        sh.write_file(&extracted, commit)?;
    }
    for entry in std::fs::read_dir(work)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("tree-") && path != tree {
            sh.remove_path(&path)?;
        }
    }
    let target = work.join("target");
    let built = work.join("built-commit");
    {
        let _dir = sh.push_dir(&tree);
        // Without .git in the tree, build.rs takes the commit from here (what --version shows).
        let _sha = sh.push_env("BUILD_GIT_SHA", short);
        let _target = sh.push_env("CARGO_TARGET_DIR", &target);
        if sh.read_file(&built).unwrap_or_default() != previous.commit {
            sh.remove_path(&built)?;
            cmd!(sh, "cargo clean --quiet -p ddms").run()?;
        }
        cmd!(sh, "cargo build --locked -p ddms --bin ddms").run()?;
    }
    sh.write_file(&built, &previous.commit)?;
    // A copy outside cargo's reach, checked to be the previous release's.
    let binary = work.join(format!("ddms-{short}"));
    sh.copy_file(target.join("debug/ddms"), &binary)?;
    let version = cmd!(sh, "{binary} --version").quiet().read()?;
    ensure!(
        version.contains(short),
        "{} is not the previous release {short}: `{version}`",
        binary.display()
    );
    Ok(binary)
}
