//! Expand/contract, checked statically: no migration may break the previous release unless it
//! says why. During a blue-green deploy the previous release keeps serving on the schema the new
//! release's migrations left (and a rollback runs it there for good), so a statement that takes
//! away or tightens something it uses is refused here unless a marker comment directly before
//! it gives the reason:
//!
//! ```sql
//! -- ddms: destructive (contract step: no release since 0.4 reads devices.legacy_config)
//! ALTER TABLE devices DROP COLUMN legacy_config;
//! ```
//!
//! The files are tokenised with sqlparser's tokenizer (PostgreSQL or SQLite dialect), so
//! comments, string literals and quoted identifiers never count as SQL; the rules then look at
//! each statement's tokens. `cargo xtask schema-compat` runs the previous release for real on
//! the new schema; this check is the fast half that names the statement.

use std::collections::BTreeSet;
use std::fmt;

use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

/// What a marker comment starts with; `(reason)` must follow.
pub const MARKER: &str = "ddms: destructive";
/// A reason shorter than this says nothing ("ok", "fine").
const MIN_REASON: usize = 10;

/// Statements of released migrations that the rules flag, each judged here instead of by a
/// marker. A released migration is never edited: sqlx stores a SHA-384 of each file's whole
/// text (`sqlx_core::migrate::Migration::new`) and refuses a database whose applied migration
/// no longer matches, so even a comment added to one would break every database that applied
/// it. Entries: (backend/file, the statement's tokens joined by single spaces, why it is safe).
pub const RELEASED: &[(&str, &str, &str)] = &[
    (
        "sqlite/0007_series_ids_never_reused.sql",
        "DROP TABLE series",
        "SQLite's table rebuild (CREATE series_new, copy, DROP, RENAME) in one transaction: the \
         rebuilt `series` has the same name and columns, so the previous release (0006) keeps \
         working; `cargo xtask schema-compat` ran 0006's binary on it",
    ),
    (
        "sqlite/0007_series_ids_never_reused.sql",
        "ALTER TABLE series_new RENAME TO series",
        "the second half of the same rebuild: the new table takes the old name back",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A statement the previous release may not survive, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    /// Line of the statement's first token (1-based).
    pub line: u64,
    /// The statement's tokens joined by single spaces (the key of [`RELEASED`]).
    pub statement: String,
    pub why: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown: String = self.statement.chars().take(120).collect();
        if shown.len() < self.statement.len() {
            shown.push('…');
        }
        write!(f, "line {}: {}: `{shown}`", self.line, self.why)
    }
}

/// A token of code (whitespace and comments dropped), as the rules see it.
#[derive(Debug)]
struct Code {
    token: Token,
    /// Parenthesis depth within the statement, before this token.
    depth: u32,
}

impl Code {
    /// The keyword, upper-cased, when the token is an unquoted word.
    fn word(&self) -> Option<String> {
        match &self.token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
            _ => None,
        }
    }

    fn is(&self, keyword: &str) -> bool {
        self.word().as_deref() == Some(keyword)
    }

    /// A name as the database folds it: unquoted words lower-cased, quoted ones as written.
    fn name(&self) -> Option<String> {
        match &self.token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
            Token::Word(w) => Some(w.value.clone()),
            _ => None,
        }
    }
}

struct Statement {
    line: u64,
    code: Vec<Code>,
    /// The comments between the previous statement and this one.
    comments: Vec<String>,
}

impl Statement {
    fn text(&self) -> String {
        let parts: Vec<String> = self.code.iter().map(|c| c.token.to_string()).collect();
        parts.join(" ")
    }
}

/// Every statement of `sql` that needs a marker and has none (or a marker without a reason).
pub fn check(sql: &str, backend: Backend) -> Result<Vec<Finding>, String> {
    let dialect: &dyn Dialect = match backend {
        Backend::Postgres => &PostgreSqlDialect {},
        Backend::Sqlite => &SQLiteDialect {},
    };
    let statements = statements(sql, dialect)?;
    let mut created = BTreeSet::new();
    let mut findings = Vec::new();
    for statement in &statements {
        let why = destructive(statement, &created, dialect)?;
        if let Some(table) = created_table(&statement.code) {
            created.insert(table);
        }
        let marker = statement
            .comments
            .iter()
            .find_map(|c| c.trim().strip_prefix(MARKER));
        let finding = |why: String| Finding {
            line: statement.line,
            statement: statement.text(),
            why,
        };
        match (why, marker) {
            (Some(why), None) => findings.push(finding(why)),
            (_, Some(rest)) => {
                let reason = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .map(str::trim)
                    .unwrap_or_default();
                if reason.chars().count() < MIN_REASON {
                    findings.push(finding(format!(
                        "a `-- {MARKER} (reason)` marker needs its reason in parentheses, at \
                         least {MIN_REASON} characters"
                    )));
                }
            }
            (None, None) => {}
        }
    }
    Ok(findings)
}

/// Splits the tokens at top-level semicolons; each statement keeps the comments before it.
fn statements(sql: &str, dialect: &dyn Dialect) -> Result<Vec<Statement>, String> {
    let tokens = Tokenizer::new(dialect, sql)
        .tokenize_with_location()
        .map_err(|e| format!("cannot tokenise: {e}"))?;
    let mut out = Vec::new();
    let mut current = Statement {
        line: 0,
        code: Vec::new(),
        comments: Vec::new(),
    };
    let mut depth: u32 = 0;
    for t in tokens {
        match t.token {
            Token::Whitespace(Whitespace::SingleLineComment { comment, .. }) => {
                if current.code.is_empty() {
                    current.comments.push(comment);
                }
            }
            Token::Whitespace(Whitespace::MultiLineComment(comment)) => {
                if current.code.is_empty() {
                    current.comments.extend(comment.lines().map(str::to_string));
                }
            }
            Token::Whitespace(_) | Token::EOF => {}
            Token::SemiColon if depth == 0 => {
                if !current.code.is_empty() {
                    out.push(current);
                }
                current = Statement {
                    line: 0,
                    code: Vec::new(),
                    comments: Vec::new(),
                };
            }
            token => {
                if current.code.is_empty() {
                    current.line = t.span.start.line;
                }
                let before = depth;
                match token {
                    Token::LParen => depth += 1,
                    Token::RParen => depth = depth.saturating_sub(1),
                    _ => {}
                }
                current.code.push(Code {
                    token,
                    depth: before,
                });
            }
        }
    }
    if !current.code.is_empty() {
        out.push(current);
    }
    Ok(out)
}

/// Why the statement would break the previous release, if it would. `created`: the tables the
/// same file created before it (no earlier release uses those).
fn destructive(
    statement: &Statement,
    created: &BTreeSet<String>,
    dialect: &dyn Dialect,
) -> Result<Option<String>, String> {
    let code = &statement.code;
    let top: Vec<&Code> = code.iter().filter(|c| c.depth == 0).collect();
    let first = code[0].word().unwrap_or_default();
    let why = |s: &str| Ok(Some(s.to_string()));
    match first.as_str() {
        "DROP" => why("DROP removes what the previous release may still use"),
        "TRUNCATE" => why("TRUNCATE deletes every row the previous release relies on"),
        "ALTER" if top.iter().any(|c| c.is("RENAME")) => {
            why("RENAME: the previous release still uses the old name")
        }
        "ALTER" if top.get(1).is_some_and(|c| c.is("TABLE")) => Ok(alter_table(code, created)),
        "CREATE" if top.get(1).is_some_and(|c| c.is("UNIQUE")) => {
            let table = after_on(code);
            Ok(table
                .filter(|t| !created.contains(t))
                .map(|t| format!("a unique index on existing table `{t}` refuses rows the previous release may write")))
        }
        "DELETE" | "WITH" => {
            let verb = top.iter().position(|c| {
                ["DELETE", "INSERT", "UPDATE", "SELECT", "MERGE"]
                    .iter()
                    .any(|k| c.is(k))
            });
            let deletes = verb.is_some_and(|i| top[i].is("DELETE"));
            let filtered = verb.is_some_and(|i| top[i..].iter().any(|c| c.is("WHERE")));
            if deletes && !filtered {
                why("DELETE without WHERE empties the table")
            } else {
                Ok(None)
            }
        }
        // A DO block runs its body now: look into it for what would be flagged as a statement.
        "DO" => {
            for c in code {
                if let Token::DollarQuotedString(body) = &c.token {
                    let inner = Tokenizer::new(dialect, &body.value)
                        .tokenize()
                        .map_err(|e| format!("cannot tokenise a DO block: {e}"))?;
                    let hit = inner.iter().any(|t| {
                        matches!(t, Token::Word(w) if w.quote_style.is_none()
                            && ["DROP", "TRUNCATE", "RENAME"]
                                .contains(&w.value.to_ascii_uppercase().as_str()))
                    });
                    if hit {
                        return why("a DO block that drops, truncates or renames");
                    }
                }
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// The table a `CREATE [UNIQUE] INDEX … ON [ONLY] [schema.]table` is on.
fn after_on(code: &[Code]) -> Option<String> {
    let on = code.iter().position(|c| c.depth == 0 && c.is("ON"))?;
    let rest: Vec<&Code> = code[on + 1..].iter().skip_while(|c| c.is("ONLY")).collect();
    qualified_name(&rest).map(|(name, _)| name)
}

/// `name` or `schema.name` at the start of `code`: the last part, and how many tokens it took.
fn qualified_name(code: &[&Code]) -> Option<(String, usize)> {
    let mut name = code.first()?.name()?;
    let mut used = 1;
    while code.get(used).is_some_and(|c| c.token == Token::Period) {
        name = code.get(used + 1)?.name()?;
        used += 2;
    }
    Some((name, used))
}

/// The table a `CREATE [TEMP|UNLOGGED] TABLE [IF NOT EXISTS] name` makes.
fn created_table(code: &[Code]) -> Option<String> {
    if !code[0].is("CREATE") {
        return None;
    }
    let table = code.iter().take(3).position(|c| c.is("TABLE"))?;
    let rest: Vec<&Code> = code[table + 1..]
        .iter()
        .skip_while(|c| c.is("IF") || c.is("NOT") || c.is("EXISTS"))
        .collect();
    qualified_name(&rest).map(|(name, _)| name)
}

/// `ALTER TABLE [IF EXISTS] [ONLY] name [*] action [, action]…` (RENAME is handled before).
fn alter_table(code: &[Code], created: &BTreeSet<String>) -> Option<String> {
    let rest: Vec<&Code> = code[2..]
        .iter()
        .skip_while(|c| c.is("IF") || c.is("EXISTS") || c.is("ONLY"))
        .collect();
    let (table, used) = qualified_name(&rest)?;
    let mut actions: Vec<Vec<&Code>> = vec![Vec::new()];
    for &c in &rest[used..] {
        if c.depth == 0 && c.token == Token::Comma {
            actions.push(Vec::new());
        } else if c.token != Token::Mul || !actions.last().is_some_and(Vec::is_empty) {
            actions.last_mut().expect("one action at least").push(c);
        }
    }
    actions
        .iter()
        .find_map(|action| alter_action(action, &table, created))
}

fn alter_action(action: &[&Code], table: &str, created: &BTreeSet<String>) -> Option<String> {
    let top: Vec<&Code> = action.iter().copied().filter(|c| c.depth == 0).collect();
    let is = |i: usize, k: &str| top.get(i).is_some_and(|c| c.is(k));
    let has_pair = |a: &str, b: &str| (0..top.len()).any(|i| is(i, a) && is(i + 1, b));
    let new_table = created.contains(table);
    match top.first()?.word()?.as_str() {
        // Relaxing a column (DROP NOT NULL) is an expand step; everything else dropped is gone.
        "DROP" if is(1, "NOT") => None,
        "DROP" => Some(format!(
            "drops part of `{table}` the previous release may use"
        )),
        "DETACH" => Some(format!(
            "DETACH PARTITION hides rows of `{table}` from the previous release"
        )),
        "ALTER" => {
            // ALTER [COLUMN] name …: what follows the name.
            let start = if is(1, "COLUMN") { 3 } else { 2 };
            let after = |k: &str| top.iter().skip(start).any(|c| c.is(k));
            if after("TYPE") {
                Some(format!("changes the type of a column of `{table}`"))
            } else if has_pair("SET", "NOT") {
                Some(format!(
                    "SET NOT NULL on `{table}` refuses rows the previous release writes without it"
                ))
            } else if top.iter().skip(start).any(|c| c.is("DROP")) && !has_pair("DROP", "NOT") {
                Some(format!(
                    "drops a column's default or expression on `{table}`"
                ))
            } else {
                None
            }
        }
        "ADD" if new_table => None,
        "ADD" => {
            let constraint = [
                "CONSTRAINT",
                "CHECK",
                "UNIQUE",
                "PRIMARY",
                "FOREIGN",
                "EXCLUDE",
            ]
            .iter()
            .any(|k| is(1, k));
            if constraint {
                return Some(format!(
                    "a new constraint on existing table `{table}` refuses rows the previous \
                     release may write"
                ));
            }
            // A new column the previous release does not know: it must be nullable or have a
            // default, or that release's inserts fail.
            let not_null = has_pair("NOT", "NULL") || is_primary_key(&top);
            let filled = top
                .iter()
                .any(|c| c.is("DEFAULT") || c.is("GENERATED") || c.is("AS"));
            (not_null && !filled).then(|| {
                format!(
                    "a NOT NULL column without DEFAULT on `{table}`: the previous release's \
                     inserts do not set it"
                )
            })
        }
        _ => None,
    }
}

fn is_primary_key(top: &[&Code]) -> bool {
    top.windows(2).any(|w| w[0].is("PRIMARY") && w[1].is("KEY"))
}

/// Every migration of both backends: findings not judged in [`RELEASED`], and the entries of
/// [`RELEASED`] that no longer match a finding (a stale judgement hides nothing, but misleads).
pub fn check_repository(root: &std::path::Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (folder, backend) in [("postgres", Backend::Postgres), ("sqlite", Backend::Sqlite)] {
        let dir = root.join("migrations").join(folder);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        for path in files {
            let name = format!("{folder}/{}", path.file_name().unwrap().to_string_lossy());
            let sql = std::fs::read_to_string(&path).unwrap();
            match check(&sql, backend) {
                Err(e) => problems.push(format!("migrations/{name}: {e}")),
                Ok(findings) => {
                    for finding in findings {
                        let judged = RELEASED.iter().position(|(file, statement, _)| {
                            *file == name && *statement == finding.statement
                        });
                        match judged {
                            Some(i) => {
                                used.insert(i);
                            }
                            None => problems.push(format!("migrations/{name}: {finding}")),
                        }
                    }
                }
            }
        }
    }
    for (i, (file, statement, _)) in RELEASED.iter().enumerate() {
        if !used.contains(&i) {
            problems.push(format!(
                "RELEASED in xtask/src/tidy/migrations.rs judges `{statement}` in {file}, \
                 which no longer flags it: remove the entry"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(sql: &str) -> Vec<String> {
        check(sql, Backend::Postgres)
            .unwrap()
            .into_iter()
            .map(|f| f.why)
            .collect()
    }

    fn flagged(sql: &str) -> bool {
        !findings(sql).is_empty()
    }

    /// The repository's own migrations: what the rules flag is marked or judged in RELEASED.
    #[test]
    fn migrations_are_expand_only_unless_marked() {
        let problems = check_repository(&crate::project_root());
        assert!(
            problems.is_empty(),
            "migrations that would break the previous release during a blue-green deploy \
             (docs/deploying.md, \"Schema changes\"): ship the expand step first and mark the \
             contract step with `-- {MARKER} (reason)` on the line before it:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn drop_column_without_marker_fails() {
        let found = check(
            "CREATE TABLE t (a INT);\n\nALTER TABLE devices DROP COLUMN legacy;\n",
            Backend::Postgres,
        )
        .unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].line, 3);
        assert_eq!(found[0].statement, "ALTER TABLE devices DROP COLUMN legacy");
        assert!(
            check("ALTER TABLE devices DROP COLUMN legacy;", Backend::Sqlite)
                .is_ok_and(|f| f.len() == 1)
        );
    }

    #[test]
    fn marker_with_a_reason_allows_the_next_statement_only() {
        let marked = "-- Contract step.\n\
                      -- ddms: destructive (no release since 0.4 reads legacy)\n\
                      ALTER TABLE devices DROP COLUMN legacy;\n";
        assert!(findings(marked).is_empty(), "{:?}", findings(marked));
        let block = "/* ddms: destructive (no release since 0.4 reads legacy) */\n\
                     ALTER TABLE devices DROP COLUMN legacy;";
        assert!(findings(block).is_empty());
        // The marker covers one statement, not the one after it.
        let two = format!("{marked}ALTER TABLE devices DROP COLUMN other;\n");
        assert_eq!(findings(&two).len(), 1);
        // A marker in the middle of another statement does not count either.
        let inside = "ALTER TABLE devices\n\
                      -- ddms: destructive (no release since 0.4 reads legacy)\n\
                      DROP COLUMN legacy;";
        assert!(flagged(inside));
    }

    #[test]
    fn marker_without_a_reason_fails() {
        for marker in [
            "-- ddms: destructive",
            "-- ddms: destructive ()",
            "-- ddms: destructive (ok)",
            "-- ddms: destructive no parentheses here at all",
        ] {
            let sql = format!("{marker}\nDROP TABLE old;");
            let found = findings(&sql);
            assert_eq!(found.len(), 1, "{marker}: {found:?}");
            assert!(found[0].contains("reason"), "{found:?}");
        }
    }

    #[test]
    fn comments_strings_and_quoted_names_do_not_count() {
        let sql = "-- DROP TABLE devices; TRUNCATE readings;\n\
                   /* ALTER TABLE users RENAME TO people; DELETE FROM users; */\n\
                   INSERT INTO notes (text) VALUES ('DROP TABLE devices; TRUNCATE x');\n\
                   COMMENT ON COLUMN series.id IS 'drop column later; rename it';\n\
                   SELECT \"drop\" FROM \"truncate\";\n\
                   CREATE TABLE t (id INT REFERENCES devices (id) ON DELETE CASCADE);\n\
                   UPDATE t SET note = 'DELETE FROM t';\n";
        assert!(findings(sql).is_empty(), "{:?}", findings(sql));
        let sqlite = check(
            "CREATE TABLE `drop` (a TEXT DEFAULT 'TRUNCATE');\n-- DROP TABLE x\n",
            Backend::Sqlite,
        )
        .unwrap();
        assert!(sqlite.is_empty(), "{sqlite:?}");
        // Dollar-quoted text is a literal too, except the body of a DO block, which runs now.
        assert!(!flagged("SELECT $$DROP TABLE devices$$;"));
        assert!(flagged(
            "DO $$ BEGIN EXECUTE 'x'; DROP TABLE devices; END $$;"
        ));
    }

    #[test]
    fn each_destructive_kind_is_flagged() {
        for sql in [
            "DROP TABLE devices",
            "DROP INDEX IF EXISTS notifications_open_uidx",
            "DROP VIEW v",
            "TRUNCATE readings",
            "DELETE FROM readings",
            "WITH old AS (SELECT 1) DELETE FROM readings",
            "ALTER TABLE devices DROP COLUMN config",
            "ALTER TABLE devices DROP config",
            "ALTER TABLE ONLY devices DROP CONSTRAINT devices_name_key",
            "ALTER TABLE devices RENAME TO things",
            "ALTER TABLE devices RENAME COLUMN config TO settings",
            "ALTER INDEX a RENAME TO b",
            "ALTER TABLE devices ALTER COLUMN enabled TYPE INTEGER",
            "ALTER TABLE devices ALTER enabled SET DATA TYPE INTEGER",
            "ALTER TABLE devices ALTER COLUMN group_id SET NOT NULL",
            "ALTER TABLE devices ALTER COLUMN enabled DROP DEFAULT",
            "ALTER TABLE devices ADD COLUMN site TEXT NOT NULL",
            "ALTER TABLE devices ADD COLUMN a TEXT, ADD COLUMN b TEXT NOT NULL",
            "ALTER TABLE devices ADD CONSTRAINT c CHECK (enabled)",
            "ALTER TABLE devices ADD UNIQUE (name, protocol)",
            "ALTER TABLE readings DETACH PARTITION readings_2026_01_01",
            "CREATE UNIQUE INDEX devices_x_uidx ON devices (name, protocol)",
            "CREATE UNIQUE INDEX CONCURRENTLY x ON ONLY public.devices (name)",
        ] {
            assert!(flagged(sql), "not flagged: {sql}");
        }
    }

    #[test]
    fn expand_steps_pass() {
        for sql in [
            "CREATE TABLE sites (id UUID PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
            "CREATE INDEX devices_group_idx ON devices (group_id)",
            "ALTER TABLE devices ADD COLUMN site TEXT",
            "ALTER TABLE devices ADD COLUMN type TEXT",
            "ALTER TABLE devices ADD COLUMN site TEXT NOT NULL DEFAULT 'main'",
            "ALTER TABLE devices ADD COLUMN n INT CHECK (n IS NOT NULL OR n > 0)",
            "ALTER TABLE devices ALTER COLUMN config DROP NOT NULL",
            "ALTER TABLE devices ALTER COLUMN type SET DEFAULT 'x'",
            "DELETE FROM leases WHERE expires_at < 0",
            "UPDATE devices SET enabled = TRUE",
            "COMMENT ON COLUMN series.id IS 'never reused'",
            "INSERT INTO t SELECT * FROM u",
        ] {
            assert!(!flagged(sql), "flagged: {sql}: {:?}", findings(sql));
        }
        // Constraints on a table this migration created: no release uses it yet.
        let new_table = "CREATE TABLE IF NOT EXISTS public.sites (id INT);\n\
                         ALTER TABLE sites ADD CONSTRAINT c CHECK (id > 0);\n\
                         ALTER TABLE sites ADD COLUMN name TEXT NOT NULL;\n\
                         CREATE UNIQUE INDEX sites_uidx ON sites (id);";
        assert!(findings(new_table).is_empty(), "{:?}", findings(new_table));
    }
}
