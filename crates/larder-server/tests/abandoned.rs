//! A write-through PUT whose HTTP client closes its socket after
//! PostgreSQL committed but before larder heard the COMMIT answer (a TCP
//! proxy in front of PostgreSQL holds it back): the handler is dropped,
//! the write is not, and both service instances (near caches holding the
//! old row) read the committed row once the answer arrives.

mod support;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use larder_server::http::app;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use support::eventually;
use support::TcpProxy;
use support::{get, unique, write, Pg};
use tokio::io::AsyncWriteExt;

fn config(source: &str, prefix: &str, table: &str) -> String {
    format!(
        "[store]\nurl = \"{}\"\nprefix = \"{prefix}\"\n\
         [source]\nurl = \"{source}\"\npool = 2\n\
         [near]\ncapacity = 1000\nttl = \"10m\"\n\
         [[entity]]\nname = \"items\"\ntable = \"{table}\"\nttl = \"10m\"\n",
        support::redis_url()
    )
}

/// Counts requests whose handler future was dropped before it answered.
#[derive(Default)]
struct Abandoned(AtomicU64);

/// Sets off its count when dropped before [`Armed::answered`].
struct Armed(Option<Arc<Abandoned>>);

impl Armed {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(count) = self.0.take() {
            count.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn watch(State(count): State<Arc<Abandoned>>, req: Request, next: Next) -> Response {
    let armed = Armed(Some(count));
    let res = next.run(req).await;
    armed.answered();
    res
}

/// The `n` column both instances answer for item 1.
async fn ns(apps: &[&axum::Router]) -> Vec<Option<i64>> {
    let mut seen = Vec::new();
    for app in apps {
        let a = get(app, "/v1/items/1").await;
        seen.push(a.json()["n"].as_i64());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_client_went_away_still_reaches_every_instance() {
    let mut pg = Pg::connect().await;
    let t = unique("items");
    pg.exec(
        &t,
        "CREATE TABLE {t} (id bigint PRIMARY KEY, n bigint NOT NULL)",
    )
    .await;
    let prefix = unique("ab");
    let proxy = TcpProxy::start(support::pg_addr());
    let a_state = support::state(&config(&support::pg_url_via(proxy.addr()), &prefix, &t)).await;
    let b_state = support::state(&config(&support::pg_url(), &prefix, &t)).await;
    let a = app(a_state);
    let b = app(b_state);

    // Instance A on a real socket, counting abandoned requests.
    let abandoned = Arc::new(Abandoned::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = a
        .clone()
        .layer(middleware::from_fn_with_state(abandoned.clone(), watch));
    let server = tokio::spawn(async move { axum::serve(listener, served).await });

    let put = write(&a, "PUT", "/v1/items/1", r#"{"id": 1, "n": 1}"#).await;
    assert_eq!(put.status.as_u16(), 200, "{:?}", put.json());
    for _ in 0..2 {
        assert_eq!(ns(&[&a, &b]).await, [Some(1), Some(1)]);
    }
    assert_eq!(get(&b, "/v1/items/1").await.x_cache(), "l1");

    // A PUT whose client closes the socket while the COMMIT answer is held.
    proxy.hold_after(b"COMMIT");
    let body = json!({"id": 1, "n": 2}).to_string();
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "PUT /v1/items/1 HTTP/1.1\r\nhost: larder\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.expect("send");
    eventually("the PUT committed in PostgreSQL", || async {
        let n = pg
            .scalar_text(&format!("SELECT n::text FROM {t} WHERE id = 1"))
            .await;
        proxy.holds() == 1 && n.as_deref() == Some("2")
    })
    .await;
    drop(client);
    eventually("the service dropped the request's handler", || async {
        abandoned.0.load(Ordering::SeqCst) == 1
    })
    .await;
    // The answer arrives after the client (and its handler) are gone.
    proxy.release();
    eventually("both instances read the committed row", || async {
        ns(&[&a, &b]).await == [Some(2), Some(2)]
    })
    .await;
    server.abort();
}
