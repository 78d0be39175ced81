//! The one `bindgen!` for `wit/keel-plugin.wit` (Spin style): every other module uses
//! these types. Imports are `trappable` so a host function can stop the guest with a
//! typed reason (storage failure, budget exceeded) instead of answering it.
#![allow(missing_docs, unreachable_pub, unsafe_code, clippy::all)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "keel:plugin/state-machine",
    imports: { default: trappable },
});
