//! Generated protobuf and gRPC code. Modules nest like the proto packages
//! (the generated code refers across packages with relative paths); the
//! short names below are what the rest of the crate uses.

#[allow(clippy::all, missing_docs)]
pub mod build {
    pub mod bazel {
        pub mod remote {
            pub mod execution {
                pub mod v2 {
                    tonic::include_proto!("build.bazel.remote.execution.v2");
                }
            }
        }
        pub mod semver {
            tonic::include_proto!("build.bazel.semver");
        }
    }
}

#[allow(clippy::all, missing_docs)]
pub mod google {
    pub mod bytestream {
        tonic::include_proto!("google.bytestream");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub use build::bazel::remote::execution::v2 as reapi;
pub use build::bazel::semver;
pub use google::bytestream;
pub use google::rpc;
