//! Nothing is generated here. The build dependency on `protoc-bin-vendored`
//! makes cargo fetch and unpack its protoc before any build script runs, so
//! that `scripts/protoc` (the `PROTOC` of `.cargo/config.toml`) finds it when
//! etcd-client's build script compiles etcd's protobuf files. This script
//! checks that the binary is where that wrapper looks, and says so if not.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(err) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo:warning=protoc-bin-vendored has no protoc for this machine ({err}); etcd-client's build needs a protoc on PATH or PROTOC set");
    }
}
