//! The admin listener: `/healthz`, `/metrics` (pingora-prometheus),
//! `/ring` and `/route?meeting_id=X`. Never on the public port.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora_prometheus::PrometheusHttpApp;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::health::HealthChecker;
use crate::metrics::Metrics;
use crate::routing::{Health, Membership};
use roompin_shared::protocol::MEETING_PARAM;
use roompin_shared::MeetingId;

pub struct Admin {
    pub membership: Arc<Membership>,
    pub health: Arc<HealthChecker>,
    pub metrics: Metrics,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let uri = session.req_header().uri.clone();
        match uri.path() {
            "/healthz" if self.health.checked_once.load(Ordering::Acquire) => {
                text(StatusCode::OK, "ok")
            }
            "/healthz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: first health checks pending\n",
            ),
            "/metrics" => PrometheusHttpApp.response(session).await,
            "/ring" => self.ring(),
            "/route" => self.route(uri.query()),
            other => text(
                StatusCode::NOT_FOUND,
                &format!("no admin route {other}: try /healthz /metrics /ring /route\n"),
            ),
        }
    }
}

impl Admin {
    fn ring(&self) -> Response<Vec<u8>> {
        let routing = self.membership.routing();
        let members: Vec<_> = routing
            .config
            .upstreams
            .iter()
            .map(|u| {
                let health = routing.health_of(&u.id);
                let control = if routing.config.moves {
                    match self.membership.push_status(&u.id) {
                        None => json!("ok"),
                        Some(why) => json!({ "error": why }),
                    }
                } else {
                    json!("off")
                };
                json!({
                    "id": u.id,
                    "addr": u.addr,
                    "weight": u.weight,
                    "health": health,
                    "owner": health == Health::Healthy,
                    "connections": self.metrics.connections.with_label_values(&[&u.id]).get(),
                    "sse_streams": self.metrics.streams.with_label_values(&[&u.id]).get(),
                    "control": control,
                })
            })
            .collect();
        json_response(
            StatusCode::OK,
            &json!({
                "epoch": routing.epoch,
                "balancer_id": routing.balancer_id,
                "hash_param": routing.config.hash_param,
                "vnodes": routing.config.vnodes,
                "members": members,
            }),
        )
    }

    fn route(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let meeting = match MeetingId::from_query(query, MEETING_PARAM) {
            Ok(m) => m,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        };
        let routing = self.membership.routing();
        match routing.owner(meeting.as_str()) {
            Some(owner) => json_response(
                StatusCode::OK,
                &json!({ "meeting_id": meeting.as_str(), "node": owner.id, "addr": owner.addr, "epoch": routing.epoch }),
            ),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "no healthy chat node\n"),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    build(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Vec<u8>> {
    build(status, "application/json", value.to_string().into_bytes())
}

fn build(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    resp
}
