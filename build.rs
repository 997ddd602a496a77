//! Generates the gRPC client and server code of the kubelet device-plugin API v1beta1 from the
//! service definitions below (tonic-build's manual builder: no protoc, no .proto file). The
//! messages are plain prost derives in `src/deviceplugin/api.rs`.

use tonic_build::manual::{Builder, Method, Service};

fn method(name: &str, route: &str, input: &str, output: &str, streaming: bool) -> Method {
    let m = Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("crate::deviceplugin::api::{input}"))
        .output_type(format!("crate::deviceplugin::api::{output}"))
        .codec_path("tonic_prost::ProstCodec");
    if streaming { m.server_streaming() } else { m }.build()
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // The routes are /v1beta1.Registration/Register and /v1beta1.DevicePlugin/<Method>, the names
    // the kubelet dials and serves.
    let registration = Service::builder()
        .name("Registration")
        .package("v1beta1")
        .method(method(
            "register",
            "Register",
            "RegisterRequest",
            "Empty",
            false,
        ))
        .build();
    let plugin = Service::builder()
        .name("DevicePlugin")
        .package("v1beta1")
        .method(method(
            "get_device_plugin_options",
            "GetDevicePluginOptions",
            "Empty",
            "DevicePluginOptions",
            false,
        ))
        .method(method(
            "list_and_watch",
            "ListAndWatch",
            "Empty",
            "ListAndWatchResponse",
            true,
        ))
        .method(method(
            "get_preferred_allocation",
            "GetPreferredAllocation",
            "PreferredAllocationRequest",
            "PreferredAllocationResponse",
            false,
        ))
        .method(method(
            "allocate",
            "Allocate",
            "AllocateRequest",
            "AllocateResponse",
            false,
        ))
        .method(method(
            "pre_start_container",
            "PreStartContainer",
            "PreStartContainerRequest",
            "PreStartContainerResponse",
            false,
        ))
        .build();
    Builder::new().compile(&[registration, plugin]);
}
