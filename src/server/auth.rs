//! The gRPC side of access control: what a call carried (the
//! `authorization: Bearer` header, the TLS peer's verified certificate) is
//! handed to [`crate::auth`] with the instance the call names, and the answer
//! becomes UNAUTHENTICATED or PERMISSION_DENIED. Handlers call
//! [`Guard::check`] once they have parsed the instance name.
//!
//! Health is not guarded (load balancers and probes carry no credentials and
//! learn nothing from it); Capabilities is a read of its instance, so a
//! client with a bad token fails at its first call (Bazel's first is
//! GetCapabilities).

use std::sync::Arc;

use tonic::{Request, Status};

use crate::auth::{Access, Auth, Credentials, Denied};
use crate::tls::{PeerInfo, TlsConn};

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// Each service's handle on the policy in force.
#[derive(Clone)]
pub struct Guard(pub Arc<Auth>);

impl Guard {
    /// Refuses the call unless its caller may do `access` on `instance`.
    pub fn check(&self, creds: &Credentials, instance: &str, access: Access) -> Result<(), Status> {
        self.0.check(creds, instance, access).map_err(|d| match d {
            Denied::Unauthenticated(m) => Status::unauthenticated(m),
            Denied::PermissionDenied(m) => Status::permission_denied(m),
        })
    }

    /// Reads the caller's credentials and checks them in one step.
    pub fn check_request<T>(&self, request: &Request<T>, instance: &str, access: Access) -> Result<(), Status> {
        self.check(&credentials(request), instance, access)
    }
}

/// What the request carried: a bearer token (the `authorization` header,
/// `Bearer` in any case) and the verified client certificate's CN.
pub fn credentials<T>(request: &Request<T>) -> Credentials {
    let bearer =
        request.metadata().get("authorization").map(|v| match v.to_str().ok().and_then(|v| v.split_once(' ')) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim().to_string(),
            // Another scheme or garbage: an unknown token, refused as such.
            _ => String::new(),
        });
    let client_cn = request.extensions().get::<PeerInfo>().and_then(|p| p.client_cn.clone());
    Credentials { bearer, client_cn }
}
