//! Compiles the REAPI, ByteStream and google.rpc protos with protox (a pure-Rust
//! protobuf parser), so building cairn needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files =
        ["proto/build/bazel/remote/execution/v2/remote_execution.proto", "proto/google/bytestream/bytestream.proto"];
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Blob payloads as `Bytes`: sliced and passed along without copying.
        .bytes(".")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
