//! The fleet commands' pure parts: host selection, release names, reports, status verdicts.

use super::*;
use serde_json::json;

fn host(name: &str) -> Host {
    Host {
        name: name.into(),
        address: format!("{name}.example.net"),
        port: 22,
        user: None,
        key: None,
        ssh_args: Vec::new(),
    }
}

#[test]
fn hosts_selects_in_inventory_order_and_refuses_unknown_names() {
    let all = vec![host("web1"), host("web2"), host("web3")];
    let names = |hosts: Vec<Host>| hosts.into_iter().map(|h| h.name).collect::<Vec<_>>();
    assert_eq!(
        names(select(all.clone(), &[]).unwrap()),
        ["web1", "web2", "web3"]
    );
    let wanted = ["web3".to_string(), " web1".to_string()];
    assert_eq!(
        names(select(all.clone(), &wanted).unwrap()),
        ["web1", "web3"]
    );
    let err = select(all, &["web1".into(), "wbe2".into()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "--hosts: wbe2 not in group `ddms` of the inventory (it has: web1, web2, web3)"
    );
}

#[test]
fn release_names_are_what_the_hosts_accept() {
    for ok in ["0.2.0", "0.2.0+rc1", "v2_x"] {
        assert!(valid_release_name(ok), "{ok}");
    }
    for bad in [
        "",
        "../x",
        "a..b",
        "-x",
        ".x",
        "a/b",
        "a b",
        &"x".repeat(129),
    ] {
        assert!(!valid_release_name(bad), "{bad}");
    }
}

#[test]
fn the_release_name_is_what_the_host_install_printed_not_the_file_name() {
    // A cargo-dist archive (`ddms-x86_64-unknown-linux-gnu.tar.gz`): the host names the
    // release after the binary's version.
    let out = "unpacking ddms-x86_64-unknown-linux-gnu.tar.gz\n\
               {\"release\": \"0.2.0\", \"path\": \"/opt/ddms/releases/0.2.0\"}\n";
    assert_eq!(installed_release(out).as_deref(), Some("0.2.0"));
    assert_eq!(installed_release("checksum mismatch\n"), None);
    assert_eq!(installed_release("{\"release\": \"\"}"), None);

    let mut installed = HostReport::new("h1", "10.0.0.1");
    installed.release = Some("0.2.0".into());
    let nothing = HostReport::new("h2", "10.0.0.2");
    assert_eq!(
        run_release(&[nothing.clone(), installed.clone()]).as_deref(),
        Some("0.2.0")
    );
    assert_eq!(run_release(std::slice::from_ref(&nothing)), None);
    // An activation record, when there is one, has the last word.
    installed.record = Some(json!({"release": "0.2.0-rc1", "result": "ok"}));
    assert_eq!(run_release(&[installed]).as_deref(), Some("0.2.0-rc1"));
}

#[test]
fn only_well_named_release_variables_are_forwarded() {
    let vars = |list: &[(&str, &str)]| {
        list.iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect::<Vec<(std::ffi::OsString, std::ffi::OsString)>>()
            .into_iter()
    };
    let env = forwarded_env(
        vars(&[
            ("PATH", "/bin"),
            ("DDMS_RELEASE_WATCH", "3"),
            ("DDMS_RELEASE_ACTOR", "spoofed"),
            ("DDMS_RELEASE_NOTE", "it's $(id)\nok"),
        ]),
        "ci",
    )
    .unwrap();
    assert_eq!(
        env,
        [
            ("DDMS_RELEASE_NOTE", "it's $(id)\nok"),
            ("DDMS_RELEASE_WATCH", "3"),
            ("DDMS_RELEASE_ACTOR", "ci"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    let err = forwarded_env(vars(&[("DDMS_RELEASE_X;id;Y", "1")]), "ci").unwrap_err();
    assert!(err.to_string().contains("`DDMS_RELEASE_X;id;Y`"), "{err}");
    assert!(forwarded_env(vars(&[("DDMS_RELEASE_x", "1")]), "ci").is_err());
}

#[test]
fn the_record_is_the_last_json_line() {
    let out = "noise\n{\"result\": \"ok\", \"n\": 1}\n\n";
    assert_eq!(last_json(out), Some(json!({"result": "ok", "n": 1})));
    assert_eq!(last_json("no json\n[1]\n"), None);
}

#[test]
fn status_is_healthy_only_with_one_active_running_ready_slot() {
    let slot = |active: bool, running: bool, ready: bool| json!({"active": active, "running": running, "ready": ready, "health": "x"});
    let status = |blue, green| json!({"slots": {"blue": blue, "green": green}});
    assert_eq!(
        status_problem(&status(slot(true, true, true), slot(false, false, false))),
        None
    );
    // The idle slot may still run (an old slot draining is not traffic).
    assert_eq!(
        status_problem(&status(slot(false, true, true), slot(true, true, true))),
        None
    );
    assert_eq!(
        status_problem(&status(slot(false, true, true), slot(false, true, true))).unwrap(),
        "0 active slots"
    );
    assert_eq!(
        status_problem(&status(slot(true, true, true), slot(true, true, true))).unwrap(),
        "2 active slots"
    );
    assert!(
        status_problem(&status(slot(true, true, false), slot(false, false, false)))
            .unwrap()
            .contains("not ready")
    );
    assert!(status_problem(&json!({})).is_some());
}
