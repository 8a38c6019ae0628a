//! The Envoy config templates, compiled into the binary. Each file under
//! `templates/` is JSON (with `//` comment lines saying why each setting
//! is there, see [`super::render`]) whose placeholders are filled by
//! [`super::render::fill`]; see that module for the syntax.

use super::render::Template;

macro_rules! template {
    ($const:ident, $file:literal) => {
        pub const $const: Template = Template {
            name: $file,
            text: include_str!(concat!("templates/", $file)),
        };
    };
}

// Whole documents.
template!(STATIC, "static.json");
template!(BOOTSTRAP, "bootstrap.json");
template!(XDS_FILE, "xds_file.json");
template!(ADMIN, "admin.json");
template!(OVERLOAD, "overload.json");
template!(STATS, "stats.json");

// Listeners and their filters.
template!(LISTENER, "listener_tcp.json");
template!(FILTER_TCP_PROXY, "filter_tcp_proxy.json");
template!(FILTER_HTTP, "filter_http.json");
template!(FILTER_RBAC, "filter_rbac.json");
template!(FILTER_CONNECTION_LIMIT, "filter_connection_limit.json");
template!(ACCESS_LOG_REFUSED, "access_log_refused.json");

// Clusters.
template!(CLUSTER, "cluster.json");
template!(OUTLIER_DETECTION, "outlier_detection.json");
template!(HEALTH_CHECK_TCP, "health_check_tcp.json");
template!(HTTP2_OPTIONS, "http2_options.json");
template!(HTTP_PROTOCOL_OPTIONS, "http_protocol_options.json");
template!(DNS_CLUSTER, "dns_cluster.json");
template!(TCP_KEEPALIVE, "tcp_keepalive.json");
template!(SDS_CLUSTER, "sds_cluster.json");

// TLS and where its secrets come from.
template!(TLS_UPSTREAM, "tls_upstream.json");
template!(TLS_DOWNSTREAM, "tls_downstream.json");
template!(SDS_GRPC, "sds_grpc.json");
template!(SDS_FILE, "sds_file.json");
template!(SECRET_CERT, "secret_cert.json");
template!(SECRET_CA, "secret_ca.json");

/// Every template, for tests that check them all.
pub const ALL: &[Template] = &[
    STATIC,
    BOOTSTRAP,
    XDS_FILE,
    ADMIN,
    OVERLOAD,
    STATS,
    LISTENER,
    FILTER_TCP_PROXY,
    FILTER_HTTP,
    FILTER_RBAC,
    FILTER_CONNECTION_LIMIT,
    ACCESS_LOG_REFUSED,
    CLUSTER,
    OUTLIER_DETECTION,
    HEALTH_CHECK_TCP,
    HTTP2_OPTIONS,
    HTTP_PROTOCOL_OPTIONS,
    DNS_CLUSTER,
    TCP_KEEPALIVE,
    SDS_CLUSTER,
    TLS_UPSTREAM,
    TLS_DOWNSTREAM,
    SDS_GRPC,
    SDS_FILE,
    SECRET_CERT,
    SECRET_CA,
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_template_is_json() {
        for t in super::ALL {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&crate::envoy::render::strip_comments(t.text)) {
                panic!("{} is not JSON: {e}", t.name);
            }
        }
    }
}
