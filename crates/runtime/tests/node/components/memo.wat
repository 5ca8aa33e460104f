;; memo: a component that keeps nothing itself and imports a host capability,
;; `acme:kv/store@1.0.0` (`get: func(key: string) -> option<string>`, `set:
;; func(key: string, value: string)`): `remember(value: string)` sets "memo",
;; `recall() -> option<string>` gets it back.
(component
  (import "acme:kv/store@1.0.0" (instance $kv
    (export "get" (func (param "key" string) (result (option string))))
    (export "set" (func (param "key" string) (param "value" string)))))
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
  (core func $get (canon lower (func $kv "get") (memory (core memory $libc "memory"))
                               (realloc (core func $libc "realloc"))))
  (core func $set (canon lower (func $kv "set") (memory (core memory $libc "memory"))))
  (core module $m
    (import "libc" "memory" (memory 1))
    (import "kv" "get" (func $get (param i32 i32 i32)))
    (import "kv" "set" (func $set (param i32 i32 i32 i32)))
    (data (i32.const 100) "memo")
    (func (export "remember") (param $ptr i32) (param $len i32)
      (call $set (i32.const 100) (i32.const 4) (local.get $ptr) (local.get $len)))
    ;; option<string> lands at 200: its case at 200, the text at 204.
    (func (export "recall") (result i32)
      (call $get (i32.const 100) (i32.const 4) (i32.const 200))
      (i32.const 200)))
  (core instance $i (instantiate $m
    (with "libc" (instance $libc))
    (with "kv" (instance (export "get" (func $get)) (export "set" (func $set))))))
  (func (export "remember") (param "value" string)
    (canon lift (core func $i "remember") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (func (export "recall") (result (option string))
    (canon lift (core func $i "recall") (memory (core memory $libc "memory"))))
)
