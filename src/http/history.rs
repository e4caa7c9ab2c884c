//! History and statistics routes: `/api/history/{keyups,links,ami,alerts}` (paged, newest
//! first) and `/api/stats/{talkers,activity}`. They read the SQLite store on its own read
//! connection from the blocking pool, so they answer whether or not AMI is up. History
//! disabled → 503; a bad parameter → 400 naming it. See `docs/history.md`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::auth::ReadAccess;
use super::errors::error_reply;
use super::{Ctx, json_reply};
use crate::history::query::{self, QueryError, RangeQuery, Scope};

/// The parameters each route takes; any other is a 400 naming it (never silently ignored:
/// AMI sessions belong to a server, not a node or link; alerts name a node at most).
const ROW_PARAMS: &[&str] = &[
    "node", "link", "server", "since", "until", "limit", "cursor",
];
const AMI_PARAMS: &[&str] = &["server", "since", "until", "limit", "cursor"];
const ALERT_PARAMS: &[&str] = &["node", "since", "until", "limit", "cursor"];
const TALKER_PARAMS: &[&str] = &["node", "since", "until", "limit"];
const ACTIVITY_PARAMS: &[&str] = &["node", "since", "until", "bucket"];

/// Which query a route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Keyups,
    Links,
    Ami,
    Alerts,
    Talkers,
    Activity,
}

impl What {
    /// The query parameters this route takes.
    fn params(self) -> &'static [&'static str] {
        match self {
            What::Keyups | What::Links => ROW_PARAMS,
            What::Ami => AMI_PARAMS,
            What::Alerts => ALERT_PARAMS,
            What::Talkers => TALKER_PARAMS,
            What::Activity => ACTIVITY_PARAMS,
        }
    }
}

/// Every history route.
pub(super) fn routes(
    ctx: Arc<Ctx>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let access = {
        let ctx = ctx.clone();
        move || super::auth::guard(ctx.clone())
    };
    let with = move || {
        let ctx = ctx.clone();
        warp::any().map(move || ctx.clone())
    };
    let history = warp::path!("api" / "history" / String)
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(access())
        .and(with())
        .and_then(|table: String, q, a, c| async move {
            let what = match table.as_str() {
                "keyups" => What::Keyups,
                "links" => What::Links,
                "ami" => What::Ami,
                "alerts" => What::Alerts,
                _ => return Err(warp::reject::not_found()),
            };
            Ok(answer(c, what, q, a).await)
        });
    let stats = warp::path!("api" / "stats" / String)
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(access())
        .and(with())
        .and_then(|which: String, q, a, c| async move {
            let what = match which.as_str() {
                "talkers" => What::Talkers,
                "activity" => What::Activity,
                _ => return Err(warp::reject::not_found()),
            };
            Ok(answer(c, what, q, a).await)
        });
    history.or(stats).unify()
}

#[derive(Serialize)]
struct Talkers {
    node: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    talkers: Vec<query::Talker>,
    /// The local receiver (people on the node's own radio), kept out of `talkers` so
    /// every entry there is a link.
    local_rx: query::LocalTotals,
}

#[derive(Serialize)]
struct Activity {
    node: Option<String>,
    bucket_seconds: u64,
    buckets: Vec<query::Bucket>,
}

async fn answer(
    ctx: Arc<Ctx>,
    what: What,
    q: HashMap<String, String>,
    access: ReadAccess,
) -> Response {
    let Some(history) = ctx.app.history.clone() else {
        return error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "history is disabled (history.enabled: false in the configuration)",
        );
    };
    let allowed = what.params();
    let mut rq = match RangeQuery::parse(&q, allowed) {
        Ok(r) => r,
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    // A node-limited identity reads only its nodes (`node=` outside them is a 403 in
    // `auth::guard`; without `node=`, the query is limited here).
    rq.scope = access.identity.limit().map(|nodes| Scope {
        nodes: nodes.to_vec(),
        servers: ctx
            .app
            .config
            .servers
            .iter()
            .filter(|s| s.nodes.iter().any(|n| nodes.contains(&n.node_id)))
            .map(|s| s.name.clone())
            .collect(),
    });
    let run = tokio::task::spawn_blocking(move || {
        history.read(|conn| -> Result<Response, QueryError> {
            let ok = |v: &dyn erased::Json| v.reply();
            Ok(match what {
                What::Keyups => ok(&query::keyups(conn, &rq)?),
                What::Links => ok(&query::links(conn, &rq)?),
                What::Ami => ok(&query::ami(conn, &rq)?),
                What::Alerts => ok(&query::alerts(conn, &rq)?),
                What::Talkers => {
                    let (talkers, local_rx) = query::talkers_and_local_rx(conn, &rq)?;
                    ok(&Talkers {
                        talkers,
                        local_rx,
                        node: rq.node.clone(),
                        since_ms: rq.since_ms,
                        until_ms: rq.until_ms,
                    })
                }
                What::Activity => ok(&Activity {
                    buckets: query::activity(conn, &rq)?,
                    node: rq.node.clone(),
                    bucket_seconds: rq.bucket_ms / 1000,
                }),
            })
        })
    });
    match run.await {
        Ok(Ok(res)) => res,
        Ok(Err(QueryError::BadParam(m))) => error_reply(StatusCode::BAD_REQUEST, &m),
        Ok(Err(QueryError::Db(m))) => {
            tracing::warn!("[HISTORY] query failed: {m}");
            error_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "the history database could not answer (see the daemon log)",
            )
        }
        Err(_) => error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the history query stopped unexpectedly",
        ),
    }
}

/// A tiny object-safe "serialise as a 200 JSON reply".
mod erased {
    use super::*;

    pub trait Json {
        fn reply(&self) -> Response;
    }

    impl<T: Serialize> Json for T {
        fn reply(&self) -> Response {
            json_reply(StatusCode::OK, self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each route's parameters are the ones `openapi.json` lists for it, so a client never
    /// sends one that the route would refuse (or that it would silently ignore).
    #[test]
    fn each_route_takes_exactly_the_parameters_openapi_lists() {
        let doc: serde_json::Value =
            serde_json::from_str(super::super::openapi::DOCUMENT).expect("openapi.json");
        for (path, what) in [
            ("/api/history/keyups", What::Keyups),
            ("/api/history/links", What::Links),
            ("/api/history/ami", What::Ami),
            ("/api/history/alerts", What::Alerts),
            ("/api/stats/talkers", What::Talkers),
            ("/api/stats/activity", What::Activity),
        ] {
            let mut listed: Vec<&str> = doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap_or_else(|| panic!("{path} has parameters"))
                .iter()
                .filter_map(|p| p["name"].as_str())
                .collect();
            let mut taken = what.params().to_vec();
            listed.sort_unstable();
            taken.sort_unstable();
            assert_eq!(listed, taken, "{path}");
        }
    }

    /// A parameter that does not apply to a route is refused, naming it.
    #[test]
    fn ami_and_alerts_refuse_what_they_cannot_filter_on() {
        for (what, param) in [
            (What::Ami, "node"),
            (What::Ami, "link"),
            (What::Alerts, "link"),
            (What::Alerts, "server"),
        ] {
            let q: HashMap<String, String> = [(param.to_owned(), "1999".to_owned())].into();
            let e = RangeQuery::parse(&q, what.params())
                .expect_err(param)
                .to_string();
            assert!(e.contains(&format!("`{param}`")), "{what:?} {param}: {e}");
        }
        let q: HashMap<String, String> = [("node".to_owned(), "1999".to_owned())].into();
        assert!(RangeQuery::parse(&q, What::Alerts.params()).is_ok());
        let q: HashMap<String, String> = [("server".to_owned(), "hub".to_owned())].into();
        assert!(RangeQuery::parse(&q, What::Ami.params()).is_ok());
    }
}
