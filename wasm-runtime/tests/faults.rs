//! The wasm layer on its own: a guest that loops, grows memory past its
//! cap or traps gets the matching fault, and a long call needs slicing.

use std::sync::Arc;

use wasm_runtime::{
    block_on, CallError, EngineOptions, GuestEngine, GuestLimits, RuntimeFault, Unmetered,
    WasmInstance,
};
use wasmtime::{Linker, Module};

const GUEST: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "spin") (loop (br 0)))
  (func (export "grow") (result i32) (memory.grow (i32.const 100)))
  (func (export "crash") unreachable)
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))
"#;

fn instance(limits: GuestLimits) -> WasmInstance<()> {
    let engine = GuestEngine::new(&EngineOptions {
        max_memory_bytes: 64 << 20,
        ..EngineOptions::default()
    })
    .expect("engine");
    let module = Module::new(engine.engine(), wat::parse_str(GUEST).unwrap()).unwrap();
    let pre = Linker::new(engine.engine())
        .instantiate_pre(&module)
        .unwrap();
    let prepared = WasmInstance::prepare(
        &pre,
        Arc::from("test"),
        limits,
        engine.long_calls().clone(),
        (),
    );
    block_on(prepared.start(&Unmetered)).expect("instantiate")
}

#[test]
fn an_honest_call_returns_its_result() {
    let mut wasm = instance(GuestLimits::default());
    let add = wasm
        .func::<(i32, i32), i32>("add", "(i32, i32) -> i32")
        .unwrap()
        .unwrap();
    assert_eq!(direct(&mut wasm, &add, (2, 3)).unwrap(), 5);
}

#[test]
fn a_long_direct_call_is_stopped_to_run_again_sliced_and_then_times_out() {
    let limits = GuestLimits {
        hook_timeout_ms: 30,
        ..GuestLimits::default()
    };
    let mut wasm = instance(limits);
    let spin = wasm.func::<(), ()>("spin", "()").unwrap().unwrap();
    wasm.begin(std::time::Duration::ZERO);
    assert!(matches!(
        wasm.call_direct(&spin, (), &Unmetered),
        Err(CallError::NeedsSlicing)
    ));

    let mut wasm = instance(limits);
    let spin = wasm.func::<(), ()>("spin", "()").unwrap().unwrap();
    wasm.begin(std::time::Duration::ZERO);
    let fault = block_on(wasm.call_sliced(&spin, (), &Unmetered))
        .unwrap_err()
        .into_fault();
    assert_eq!(fault, RuntimeFault::Timeout { limit_ms: 30 });
}

/// A direct call of `func`, made again when it came back needing slicing:
/// a short call only does when the epoch ticker's tick lands on it, which
/// a loaded machine makes likely. Epoch checks come at a function's entry
/// and loop headers, so these loop-free calls are cut before they begin.
fn direct<P, R>(
    wasm: &mut WasmInstance<()>,
    func: &wasmtime::TypedFunc<P, R>,
    params: P,
) -> Result<R, CallError>
where
    P: wasmtime::WasmParams + Copy,
    R: wasmtime::WasmResults,
{
    for _ in 0..100 {
        wasm.begin(std::time::Duration::ZERO);
        match wasm.call_direct(func, params, &Unmetered) {
            Err(CallError::NeedsSlicing) => continue,
            other => return other,
        }
    }
    panic!("a loop-free call needed slicing 100 times");
}

#[test]
fn memory_past_the_cap_and_traps_are_named() {
    let mut wasm = instance(GuestLimits {
        memory_limit_mib: 2,
        ..GuestLimits::default()
    });
    let grow = wasm.func::<(), i32>("grow", "() -> i32").unwrap().unwrap();
    // memory.grow past a store limit returns -1 to the guest (no trap).
    assert_eq!(direct(&mut wasm, &grow, ()).unwrap(), -1);

    // A trap after a refused grow is the guest giving up for lack of
    // memory (Rust's allocator aborts): it is named a memory limit.
    let crash = wasm.func::<(), ()>("crash", "()").unwrap().unwrap();
    let fault = direct(&mut wasm, &crash, ()).unwrap_err().into_fault();
    assert!(
        matches!(fault, RuntimeFault::MemoryLimit { limit_mib: 2, .. }),
        "{fault}"
    );

    let mut wasm = instance(GuestLimits::default());
    let crash = wasm.func::<(), ()>("crash", "()").unwrap().unwrap();
    let fault = direct(&mut wasm, &crash, ()).unwrap_err().into_fault();
    assert!(matches!(fault, RuntimeFault::Trap { .. }), "{fault}");
    assert_eq!(fault.kind(), "trap");
}
