;; sandboxed: a component importing WASI 0.2 — `wasi:cli/environment` and
;; `wasi:random/random` — to show the node's sandbox: `seen() -> u32` is how
;; many environment variables and arguments it sees, `dice() -> u64` a random
;; number.
(component
  (import "wasi:cli/environment@0.2.0" (instance $environment
    (export "get-environment" (func (result (list (tuple string string)))))
    (export "get-arguments" (func (result (list string))))))
  (import "wasi:random/random@0.2.0" (instance $random
    (export "get-random-u64" (func (result u64)))))
  (core module $libc
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 8192))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $ptr i32)
      (if (i32.gt_u (i32.add (global.get $heap) (local.get 3)) (i32.const 61440))
        (then (global.set $heap (i32.const 8192))))
      (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                               (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $ptr) (local.get 3)))
      (local.get $ptr)))
  (core instance $libc (instantiate $libc))
  (core func $get-environment (canon lower (func $environment "get-environment")
    (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core func $get-arguments (canon lower (func $environment "get-arguments")
    (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core func $get-random-u64 (canon lower (func $random "get-random-u64")))
  (core module $m
    (import "libc" "memory" (memory 1))
    (import "wasi" "get-environment" (func $get-environment (param i32)))
    (import "wasi" "get-arguments" (func $get-arguments (param i32)))
    (import "wasi" "get-random-u64" (func $get-random-u64 (result i64)))
    ;; Each list lands as (ptr, len) at 100 and 108: their lengths, added.
    (func (export "seen") (result i32)
      (call $get-environment (i32.const 100))
      (call $get-arguments (i32.const 108))
      (i32.add (i32.load (i32.const 104)) (i32.load (i32.const 112))))
    (func (export "dice") (result i64) (call $get-random-u64)))
  (core instance $i (instantiate $m
    (with "libc" (instance $libc))
    (with "wasi" (instance
      (export "get-environment" (func $get-environment))
      (export "get-arguments" (func $get-arguments))
      (export "get-random-u64" (func $get-random-u64))))))
  (func (export "seen") (result u32) (canon lift (core func $i "seen")))
  (func (export "dice") (result u64) (canon lift (core func $i "dice")))
)
