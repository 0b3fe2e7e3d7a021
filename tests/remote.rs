//! The store's remote tier end to end, against a real S3-compatible server (moto, started by the
//! harness on 127.0.0.1): each "machine" is a folder with its own local store and lock file running
//! the same pipeline. Round trip, a tampered object refused and recomputed, a killed upload that
//! leaves no visible entry, two machines at once computing each stage once, `--only` downloading the
//! upstream it needs, a `file://` remote named by `PTL_REMOTE_STORE`, and a bad address as an error.

mod common;

use common::machine::{err, out, three_stages, Machine};
use common::s3;
use std::process::Stdio;

/// The three stages, with the remote store when one is given.
fn pipeline(remote: Option<&str>, sleep_ms: u64) -> String {
    let store = remote.map_or(String::new(), |r| {
        format!("store {{\n  remote = \"{r}\"\n}}\n\n")
    });
    three_stages(&store, sleep_ms, false)
}

/// A bucket of its own for one test, and the pipeline's remote in it.
fn bucket(name: &str) -> (String, String) {
    let bucket = format!("ptl-{name}-{}", std::process::id());
    s3::shared().create_bucket(&bucket);
    let url = format!("s3://{bucket}/team");
    (bucket, url)
}

fn remote_entries(bucket: &str) -> Vec<String> {
    s3::shared().list(bucket, "team/entries/")
}

#[test]
fn a_second_machine_downloads_every_stage_and_computes_none() {
    let (bucket, url) = bucket("roundtrip");
    let text = pipeline(Some(&url), 0);
    let first = Machine::new("roundtrip", "first", &text);
    let said = first.run_ok();
    assert_eq!(first.ran(), ["a", "b", "c"]);
    assert_eq!(
        said.matches("uploaded to the remote store").count(),
        3,
        "{said}"
    );
    assert_eq!(remote_entries(&bucket).len(), 3);

    let second = Machine::new("roundtrip", "second", &text);
    assert_eq!(
        second.plan(),
        [
            ("a".to_string(), "cached".to_string(), true),
            ("b".to_string(), "cached".to_string(), true),
            ("c".to_string(), "cached".to_string(), true),
        ]
    );
    let human = out(&second.ptl(&["plan", "p.ptl"]));
    assert!(human.contains("cached (remote) a (test_step)"), "{human}");
    let said = second.run_ok();
    assert!(second.ran().is_empty(), "nothing is computed twice: {said}");
    assert_eq!(
        said.matches("(downloaded from the remote store in").count(),
        3,
        "{said}"
    );
    assert!(
        said.ends_with("3 cached, 0 ran, 0 failed, 0 blocked\n"),
        "{said}"
    );
    assert_eq!(
        second.lock(),
        first.lock(),
        "the same lock file as a local run"
    );
    let verify = second.ptl(&["store", "verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", err(&verify));
    // Now local: a rerun neither downloads nor computes.
    let again = second.run_ok();
    assert!(!again.contains("downloaded"), "{again}");
}

#[test]
fn a_tampered_remote_object_is_refused_and_recomputed() {
    let (bucket, url) = bucket("tamper");
    let text = pipeline(Some(&url), 0);
    let first = Machine::new("tamper", "first", &text);
    first.run_ok();
    first.ran();
    let key_b = first.lock()["stages"]["b"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&s3::shared().get(&bucket, &format!("team/entries/{key_b}.json")))
            .unwrap();
    let hash = manifest["files"]["model/weights.txt"]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let object = format!("team/objects/{hash}");
    let original = s3::shared().get(&bucket, &object);
    s3::shared().put(&bucket, &object, b"not what the manifest says");

    let second = Machine::new("tamper", "second", &text);
    let said = second.run_ok();
    assert_eq!(
        second.ran(),
        ["b"],
        "only the tampered entry is computed: {said}"
    );
    assert!(
        said.contains("b: the remote copy of model/weights.txt does not match"),
        "{said}"
    );
    assert_eq!(second.lock(), first.lock());
    // The recomputed entry went up again, its object with it.
    assert_eq!(s3::shared().get(&bucket, &object), original);
    let third = Machine::new("tamper", "third", &text);
    third.run_ok();
    assert!(third.ran().is_empty());
}

#[test]
fn a_killed_upload_leaves_no_visible_entry() {
    let (bucket, url) = bucket("killed");
    let text = pipeline(Some(&url), 0);
    let first = Machine::new("killed", "first", &text);
    let o = first
        .cmd(&["run", "p.ptl"])
        .env("PTL_FAULT", "crash_before_remote_manifest")
        .env("PTL_REMOTE_LEASE_SECONDS", "3")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), None, "killed: {}{}", out(&o), err(&o));
    assert!(
        !s3::shared().list(&bucket, "team/objects/").is_empty(),
        "the objects went up"
    );
    assert!(remote_entries(&bucket).is_empty(), "but no manifest");

    // The dead run's lease on `a` holds until it expires (3 s here), then is broken.
    let second = Machine::new("killed", "second", &text);
    let plan = second.plan();
    assert_eq!(plan[0], ("a".to_string(), "run".to_string(), false));
    let o = second
        .cmd(&["run", "p.ptl"])
        .env("PTL_REMOTE_LEASE_SECONDS", "3")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains("a: waiting for "), "{}", out(&o));
    assert_eq!(second.ran(), ["a", "b", "c"]);
    assert_eq!(remote_entries(&bucket).len(), 3);
}

#[test]
fn two_machines_on_one_bucket_compute_each_stage_once() {
    let (bucket, url) = bucket("together");
    let text = pipeline(Some(&url), 1500);
    let (one, two) = (
        Machine::new("together", "one", &text),
        Machine::new("together", "two", &text),
    );
    let spawn = |m: &Machine| {
        m.cmd(&["run", "p.ptl"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (spawn(&one), spawn(&two));
    let (o1, o2) = (
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    );
    assert_eq!(o1.status.code(), Some(0), "{}{}", out(&o1), err(&o1));
    assert_eq!(o2.status.code(), Some(0), "{}{}", out(&o2), err(&o2));
    let mut ran = one.ran();
    ran.extend(two.ran());
    ran.sort();
    assert_eq!(
        ran,
        ["a", "b", "c"],
        "each stage computed once between the two:\n{}\n{}",
        out(&o1),
        out(&o2)
    );
    let both = format!("{}{}", out(&o1), out(&o2));
    assert!(both.contains("a: waiting for "), "{both}");
    assert_eq!(one.lock(), two.lock());
    assert_eq!(remote_entries(&bucket).len(), 3);
    assert!(
        s3::shared().list(&bucket, "team/leases/").is_empty(),
        "leases are given back"
    );
}

#[test]
fn only_downloads_the_upstream_it_needs() {
    let (_bucket, url) = bucket("only");
    let first = Machine::new("only", "first", &pipeline(Some(&url), 0));
    first.run_ok();
    first.ran();
    let second = Machine::new("only", "second", &pipeline(Some(&url), 0));
    let o = second.ptl(&["run", "p.ptl", "--only", "c", "--set", "c.text=\"changed\""]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));
    let said = out(&o);
    assert_eq!(second.ran(), ["c"], "{said}");
    assert!(
        said.contains("cached   a (downloaded from the remote store"),
        "{said}"
    );
    assert!(said.contains("skipped  b"), "b is not needed: {said}");
}

#[test]
fn a_shared_folder_named_by_the_environment_is_a_remote_store() {
    let shared = std::env::temp_dir().join(format!("ptl-remote-folder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&shared);
    let url = format!("file://{}", shared.display());
    let text = pipeline(None, 0);
    let first = Machine::new("folder", "first", &text);
    let o = first
        .cmd(&["run", "p.ptl"])
        .env("PTL_REMOTE_STORE", &url)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(first.ran(), ["a", "b", "c"]);
    assert_eq!(
        std::fs::read_dir(shared.join("entries")).unwrap().count(),
        3
    );

    let second = Machine::new("folder", "second", &text);
    let o = second
        .cmd(&["run", "p.ptl"])
        .env("PTL_REMOTE_STORE", &url)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(second.ran().is_empty(), "{}", out(&o));
    assert_eq!(second.lock(), first.lock());
    // Without the variable the remote is not used.
    let third = Machine::new("folder", "third", &text);
    third.run_ok();
    assert_eq!(third.ran(), ["a", "b", "c"]);
    let _ = std::fs::remove_dir_all(&shared);
}

#[test]
fn a_remote_that_is_not_a_store_address_is_an_error() {
    let m = Machine::new("bad", "one", &pipeline(Some("http://example.com/x"), 0));
    let o = m.ptl(&["check", "p.ptl"]);
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(e.contains("ptl::out_of_range"), "{e}");
    assert!(e.contains("is not a remote store"), "{e}");

    let m = Machine::new("bad", "two", &pipeline(None, 0));
    let o = m
        .cmd(&["run", "p.ptl"])
        .env("PTL_REMOTE_STORE", "ftp://x")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("PTL_REMOTE_STORE=\"ftp://x\""),
        "{}",
        err(&o)
    );
    assert!(m.ran().is_empty(), "nothing runs");
}

#[test]
fn store_opens_a_block_and_is_still_a_name() {
    let text = r#"store {
  remote = ""
}

let store = jsonl("d.jsonl", format = "text")

stage a = test_step {
  data = store
}
"#;
    let m = Machine::new("name", "one", text);
    let o = m.ptl(&["check", "p.ptl"]);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    let o = m.ptl(&["fmt", "--check", "p.ptl"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "canonical as written: {}{}",
        out(&o),
        err(&o)
    );
    let o = m.ptl(&["plan", "p.ptl", "--set", "store.remote=\"s3://\""]);
    assert_eq!(o.status.code(), Some(1), "an override is checked too");
    assert!(
        err(&o).contains("an s3:// address names a bucket"),
        "{}",
        err(&o)
    );
}
