//! Generated protobuf and gRPC code, one module per proto package.

#[allow(clippy::all, missing_docs)]
pub mod reapi {
    tonic::include_proto!("build.bazel.remote.execution.v2");
}

#[allow(clippy::all, missing_docs)]
pub mod semver {
    tonic::include_proto!("build.bazel.semver");
}

#[allow(clippy::all, missing_docs)]
pub mod bytestream {
    tonic::include_proto!("google.bytestream");
}

#[allow(clippy::all, missing_docs)]
pub mod rpc {
    tonic::include_proto!("google.rpc");
}
