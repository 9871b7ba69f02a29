//! Validation of `[balance.check]`: the health check's type and the keys only
//! that type takes (http, mysql, exec), its interval, timeout and thresholds.

use super::file::{CheckFile, StatusText};
use super::model::{CheckConfig, CheckKind, MysqlRequire, StatusMatch};
use super::validate::bounded;
use crate::locate::KeyPath;
use crate::validate::Ctx;
use crate::values::{argv, duration, system_user};
use std::path::Path;
use std::time::Duration;

/// A password file holds one password; anything larger is a wrong path.
const MAX_PASSWORD_FILE_BYTES: usize = 64 * 1024;

pub(crate) const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
pub(crate) const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_RISE: u32 = 2;
pub(crate) const DEFAULT_FALL: u32 = 3;

pub(super) fn check_config(
    ctx: &mut Ctx<'_>,
    p: &KeyPath,
    who: &str,
    file: Option<CheckFile>,
) -> Option<CheckConfig> {
    let Some(c) = file else {
        return Some(CheckConfig {
            kind: CheckKind::Tcp,
            interval: DEFAULT_CHECK_INTERVAL,
            timeout: DEFAULT_CHECK_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            port: None,
        });
    };
    let kind_name = c.kind.as_deref().unwrap_or("tcp");
    let misplaced = |key: &str, present: bool, ctx: &mut Ctx<'_>| {
        if present {
            ctx.error(
                &p.key(key),
                format!("{who}: `{key}` does not apply to a check of type {kind_name:?}"),
            );
        }
    };
    let is = |k: &str| kind_name == k;
    misplaced("method", c.method.is_some() && !is("http"), ctx);
    misplaced("path", c.path.is_some() && !is("http"), ctx);
    misplaced("host", c.host.is_some() && !is("http"), ctx);
    misplaced(
        "expect_status",
        c.expect_status.is_some() && !is("http"),
        ctx,
    );
    misplaced("expect_body", c.expect_body.is_some() && !is("http"), ctx);
    misplaced("user", c.user.is_some() && !is("mysql") && !is("exec"), ctx);
    misplaced("password", c.password.is_some() && !is("mysql"), ctx);
    misplaced(
        "password_file",
        c.password_file.is_some() && !is("mysql"),
        ctx,
    );
    misplaced("require", c.require.is_some() && !is("mysql"), ctx);
    misplaced("max_lag", c.max_lag.is_some() && !is("mysql"), ctx);
    misplaced("command", c.command.is_some() && !is("exec"), ctx);
    let kind = match kind_name {
        "none" => Some(CheckKind::None),
        "tcp" => Some(CheckKind::Tcp),
        "http" => http_check(ctx, p, who, &c),
        "mysql" => mysql_check(ctx, p, who, &c),
        "agent" => Some(CheckKind::Agent),
        "exec" => {
            let command = argv(ctx, &p.key("command"), who, "command", c.command, true);
            let user = system_user(ctx, &p.key("user"), who, c.user.clone());
            match (command, user) {
                (Some(Some(command)), Some(user)) => Some(CheckKind::Exec { command, user }),
                _ => None,
            }
        }
        other => {
            ctx.error(
                &p.key("type"),
                format!("{who}: unknown check type {other:?}; use \"tcp\" (default), \"http\", \"mysql\", \"agent\", \"exec\" or \"none\""),
            );
            None
        }
    };
    let interval = duration(
        ctx,
        &p.key("interval"),
        c.interval.as_ref(),
        DEFAULT_CHECK_INTERVAL,
    );
    // Unless set, a check may take up to its interval (at most the default timeout).
    let default_timeout = interval.map_or(DEFAULT_CHECK_TIMEOUT, |i| i.min(DEFAULT_CHECK_TIMEOUT));
    let timeout = duration(ctx, &p.key("timeout"), c.timeout.as_ref(), default_timeout);
    let rise = bounded(
        ctx,
        &p.key("rise"),
        who,
        "check rise",
        c.rise,
        DEFAULT_RISE as i64,
        1,
        100,
    );
    let fall = bounded(
        ctx,
        &p.key("fall"),
        who,
        "check fall",
        c.fall,
        DEFAULT_FALL as i64,
        1,
        100,
    );
    let port = match c.port {
        None => Some(None),
        Some(n) if (1..=65535).contains(&n) => Some(Some(n as u16)),
        Some(n) => {
            ctx.error(
                &p.key("port"),
                format!("{who}: check port {n} is not a port (1-65535)"),
            );
            None
        }
    };
    if let (Some(i), Some(t)) = (interval, timeout) {
        if t > i {
            ctx.warn(
                &p.key("timeout"),
                format!("{who}: the check timeout is longer than its interval; checks will run back to back"),
            );
        }
    }
    Some(CheckConfig {
        kind: kind?,
        interval: interval?,
        timeout: timeout?,
        rise: rise? as u32,
        fall: fall? as u32,
        port: port?,
    })
}

fn http_check(ctx: &mut Ctx<'_>, p: &KeyPath, who: &str, c: &CheckFile) -> Option<CheckKind> {
    let method = c.method.clone().unwrap_or_else(|| "GET".into());
    let mut ok = true;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        ctx.error(&p.key("method"), format!("{who}: check method {method:?} must be an HTTP method in capitals, e.g. \"GET\" or \"HEAD\""));
        ok = false;
    }
    let path = c.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        ctx.error(&p.key("path"), format!("{who}: check path {path:?} must start with '/' and hold no spaces or control characters"));
        ok = false;
    }
    if let Some(h) = &c.host {
        if h.is_empty() || h.bytes().any(|b| b <= b' ' || b == 0x7f) {
            ctx.error(
                &p.key("host"),
                format!("{who}: check host {h:?} holds spaces or control characters"),
            );
            ok = false;
        }
    }
    let expect_status = match &c.expect_status {
        None => Some(StatusMatch::Range(200, 399)),
        Some(StatusText::Code(n)) if (100..=599).contains(n) => {
            Some(StatusMatch::Range(*n as u16, *n as u16))
        }
        Some(StatusText::Code(n)) => {
            ctx.error(
                &p.key("expect_status"),
                format!("{who}: {n} is not an HTTP status"),
            );
            None
        }
        Some(StatusText::Text(t)) => match status_match(t) {
            Some(m) => Some(m),
            None => {
                ctx.error(
                    &p.key("expect_status"),
                    format!("{who}: expect_status {t:?}: write a status (200), a class (\"2xx\") or a range (\"200-399\")"),
                );
                None
            }
        },
    };
    let expect_status = expect_status?;
    ok.then(|| CheckKind::Http {
        method,
        path,
        host: c.host.clone(),
        expect_status,
        expect_body: c.expect_body.clone(),
    })
}

fn status_match(t: &str) -> Option<StatusMatch> {
    let code = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (100..=599).contains(n))
    };
    let t = t.trim();
    if t.len() == 3 && t.ends_with("xx") {
        let d = t[..1].parse::<u16>().ok().filter(|d| (1..=5).contains(d))?;
        return Some(StatusMatch::Range(d * 100, d * 100 + 99));
    }
    match t.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (code(a)?, code(b)?);
            (a <= b).then_some(StatusMatch::Range(a, b))
        }
        None => code(t).map(|n| StatusMatch::Range(n, n)),
    }
}

fn mysql_check(ctx: &mut Ctx<'_>, p: &KeyPath, who: &str, c: &CheckFile) -> Option<CheckKind> {
    let user = match &c.user {
        Some(u) if !u.is_empty() => Some(u.clone()),
        _ => {
            ctx.error(
                &p.key("user"),
                format!("{who}: a mysql check needs `user`, an account that may log in (it needs no privileges for read_only; REPLICATION CLIENT or SLAVE MONITOR for replica state)"),
            );
            None
        }
    };
    let password = match (&c.password, &c.password_file) {
        (Some(_), Some(_)) => {
            ctx.error(
                &p.key("password_file"),
                format!("{who}: give `password` or `password_file`, not both"),
            );
            None
        }
        (Some(pw), None) => Some(pw.clone()),
        (None, Some(file)) => match crate::read_bounded(Path::new(file), MAX_PASSWORD_FILE_BYTES) {
            Ok(text) => Some(text.trim_end_matches(['\n', '\r']).to_string()),
            Err(e) => {
                ctx.error(
                    &p.key("password_file"),
                    format!("{who}: cannot read password_file {file:?}: {e}"),
                );
                None
            }
        },
        (None, None) => Some(String::new()),
    };
    let max_lag = duration(
        ctx,
        &p.key("max_lag"),
        c.max_lag.as_ref(),
        Duration::from_secs(30),
    );
    let require = match c.require.as_deref() {
        None | Some("primary") => Some(MysqlRequire::Primary),
        Some("replica") => max_lag.map(|max_lag| MysqlRequire::Replica { max_lag }),
        Some("any") => Some(MysqlRequire::Any),
        Some(other) => {
            ctx.error(
                &p.key("require"),
                format!("{who}: unknown require {other:?}; use \"primary\" (default: writable servers only), \"replica\" or \"any\""),
            );
            None
        }
    };
    Some(CheckKind::Mysql {
        user: user?,
        password: password?,
        require: require?,
    })
}
