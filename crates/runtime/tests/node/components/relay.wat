;; relay: a component that calls another module through `zest:guest/host`'s
;; `call`: `relay() -> string` returns what `keeper.add([20, 22])` answered
;; (its JSON text), or the failure `call` reported.
(component
  (import "zest:guest/host@1.0.0" (instance $host
    (export "call" (func (param "module" string) (param "function" string) (param "args" string)
                         (result (result string (error string)))))))
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
  (core func $call (canon lower (func $host "call") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core module $m
    (import "libc" "memory" (memory 1))
    (import "host" "call" (func $call (param i32 i32 i32 i32 i32 i32 i32)))
    (data (i32.const 100) "keeperadd[20,22]")
    ;; result<string, string> lands at 200: its case at 200, the text at 204.
    (func (export "relay") (result i32)
      (call $call (i32.const 100) (i32.const 6) (i32.const 106) (i32.const 3) (i32.const 109) (i32.const 7)
                  (i32.const 200))
      (i32.const 204)))
  (core instance $i (instantiate $m
    (with "libc" (instance $libc))
    (with "host" (instance (export "call" (func $call))))))
  (func (export "relay") (result string) (canon lift (core func $i "relay") (memory (core memory $libc "memory"))))
)
