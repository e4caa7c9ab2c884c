//! Hot reload: save by rename, broken versions keep the old one, deletes unload, editor
//! files are ignored, SIGHUP reloads everything.

mod lua_support;

use std::time::Duration;

use allstar_nexus::script::ScriptState;
use lua_support::{Rig, TempDir};
use serde_json::json;

const V1: &str = "function version() return 1 end\n";
const V2: &str = "function version() return 2 end\n";
const BROKEN: &str = "function version() return 3 end\n\nlocal x = = 1\n";
const FAILS_AT_RUN: &str = "function version() return 4 end\nerror('refusing to start')\n";

#[tokio::test]
async fn save_by_rename_reloads_and_broken_versions_keep_the_old_one() {
    let dir = TempDir::new("reload");
    dir.save("x.lua", V1);
    let rig = Rig::start(dir.path(), "", &[]).await;
    rig.loaded("x.lua", V1).await;
    assert_eq!(rig.call("x.lua", "version", vec![]).await, json!(1));

    dir.save("x.lua", V2);
    rig.loaded("x.lua", V2).await;
    assert_eq!(rig.call("x.lua", "version", vec![]).await, json!(2));
    assert_eq!(rig.app.scripts.get("x.lua").map(|s| s.reloads), Some(1));

    dir.save("x.lua", BROKEN);
    let shown = rig
        .host
        .wait_until(Duration::from_secs(5), |_| {
            rig.app
                .scripts
                .get("x.lua")
                .is_some_and(|s| s.status == ScriptState::Error)
        })
        .await;
    assert!(
        shown,
        "the syntax error must show: {:?}",
        rig.app.scripts.get("x.lua")
    );
    let status = rig.app.scripts.get("x.lua").expect("status");
    let err = status.last_error.expect("last_error");
    assert!(err.contains("x.lua:3:"), "line number in {err:?}");
    assert_eq!(
        rig.call("x.lua", "version", vec![]).await,
        json!(2),
        "old version keeps running"
    );
    assert!(
        rig.app
            .metrics
            .render()
            .contains("nexus_script_reloads_total{result=\"error\",script=\"x.lua\"} 1")
    );

    dir.save("x.lua", FAILS_AT_RUN);
    let shown = rig
        .host
        .wait_until(Duration::from_secs(5), |_| {
            rig.app
                .scripts
                .get("x.lua")
                .and_then(|s| s.last_error)
                .is_some_and(|e| e.contains("refusing to start"))
        })
        .await;
    assert!(shown, "{:?}", rig.app.scripts.get("x.lua"));
    assert_eq!(
        rig.call("x.lua", "version", vec![]).await,
        json!(2),
        "a failing top level does not swap"
    );
    assert!(
        rig.app
            .scripts
            .get("x.lua")
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.contains("x.lua:2:"))
    );

    dir.save("x.lua", V1);
    rig.loaded("x.lua", V1).await;
    assert_eq!(
        rig.app.scripts.get("x.lua").map(|s| s.status),
        Some(ScriptState::Running)
    );
}

#[tokio::test]
async fn deleting_a_script_unloads_it() {
    let dir = TempDir::new("delete");
    dir.save("gone.lua", V1);
    dir.save("stays.lua", V2);
    let rig = Rig::start(dir.path(), "", &[]).await;
    rig.loaded("gone.lua", V1).await;
    rig.loaded("stays.lua", V2).await;
    assert!(rig.app.metrics.render().contains("nexus_scripts_loaded 2"));

    std::fs::remove_file(dir.path().join("gone.lua")).expect("remove");
    let unloaded = rig
        .host
        .wait_until(Duration::from_secs(5), |h| {
            h.version("gone.lua").is_none() && rig.app.scripts.get("gone.lua").is_none()
        })
        .await;
    assert!(unloaded);
    assert!(rig.host.call("gone.lua", "version", vec![]).await.is_err());
    assert_eq!(rig.call("stays.lua", "version", vec![]).await, json!(2));
    assert!(rig.app.metrics.render().contains("nexus_scripts_loaded 1"));
}

#[tokio::test]
async fn editor_files_are_ignored_and_unchanged_content_is_not_reloaded() {
    let dir = TempDir::new("ignore");
    dir.save("x.lua", V1);
    let rig = Rig::start(dir.path(), "", &[]).await;
    rig.loaded("x.lua", V1).await;
    let loaded_at = rig.app.scripts.get("x.lua").and_then(|s| s.loaded_at_ms);

    for junk in [".#x.lua", "x.lua~", ".x.lua.swp", "x.txt", "#x.lua#"] {
        std::fs::write(dir.path().join(junk), "error('must not load')").expect("write");
    }
    dir.save("x.lua", V1); // same content, new file
    rig.host.rescan();
    rig.host.flush().await;
    tokio::time::sleep(Duration::from_millis(400)).await; // let the watcher's debounce fire too
    rig.host.flush().await;
    assert_eq!(
        rig.app.scripts.list().len(),
        1,
        "{:?}",
        rig.app.scripts.list()
    );
    let s = rig.app.scripts.get("x.lua").expect("status");
    assert_eq!((s.reloads, s.loaded_at_ms, s.errors), (0, loaded_at, 0));
}

#[tokio::test]
async fn reload_all_reloads_unchanged_scripts_and_keeps_their_store() {
    let dir = TempDir::new("sighup");
    let src = "nexus.store.loads = (nexus.store.loads or 0) + 1\nfunction loads() return nexus.store.loads end\n";
    dir.save("count.lua", src);
    let rig = Rig::start(dir.path(), "", &[]).await;
    rig.loaded("count.lua", src).await;
    for expected in 2..=3 {
        rig.host.reload_all();
        rig.host.flush().await;
        assert_eq!(
            rig.call("count.lua", "loads", vec![]).await,
            json!(expected)
        );
    }
    assert_eq!(rig.app.scripts.get("count.lua").map(|s| s.reloads), Some(2));
}

#[tokio::test]
async fn scripts_cannot_see_each_others_globals() {
    let dir = TempDir::new("isolation");
    let a = "shared = 'from a'\nstring.secret = 'a'\nfunction peek() return tostring(shared) end\n";
    let b = "function peek() return tostring(shared) .. ' ' .. tostring(string.secret) .. ' ' .. tostring(rawget(_G, 'peek') ~= nil) end\n";
    dir.save("a.lua", a);
    dir.save("b.lua", b);
    let rig = Rig::start(dir.path(), "", &[]).await;
    rig.loaded("a.lua", a).await;
    rig.loaded("b.lua", b).await;
    assert_eq!(rig.call("a.lua", "peek", vec![]).await, json!("from a"));
    assert_eq!(
        rig.call("b.lua", "peek", vec![]).await,
        json!("nil nil true")
    );
}

#[tokio::test]
async fn reading_the_scripts_does_not_trigger_rescans() {
    let dir = TempDir::new("idle");
    dir.save("a.lua", V1);
    dir.save("b.lua", V2);
    let rig = Rig::start(dir.path(), "", &[]).await;
    rig.loaded("a.lua", V1).await;
    rig.loaded("b.lua", V2).await;
    // A save: exactly one rescan follows it (which reads every script again).
    dir.save("c.lua", V1);
    rig.loaded("c.lua", V1).await;
    let after_save = rig.host.rescans();
    // Anything reading the scripts (an editor, a backup, the rescan itself) is no change.
    for _ in 0..5 {
        for name in ["a.lua", "b.lua", "c.lua"] {
            let _ = std::fs::read(dir.path().join(name));
        }
    }
    // Proving an absence takes a quiet spell: five debounce periods (before the fix the
    // watcher rescanned about every 200 ms, forever).
    tokio::time::sleep(allstar_nexus::script::reload::DEBOUNCE * 5).await;
    assert_eq!(rig.host.rescans(), after_save, "rescans while idle");
}
