;; keeper: a component (CONTRACT.md §13) with callables and a process.
;;
;; Callables: `add(a: u32, b: u32) -> u32`, `echo(text: string) -> string`,
;; `shop#total(prices: list<u32>) -> u32` (an exported interface), and
;; `vsn() -> string` ("c1"), `boom()` (traps), `spin()` (never returns) and
;; `mirror(d: direction) -> direction` (of the exported enum `direction`). As a process (`zest:guest/process`) it keeps the
;; JSON text it was given last — `init`'s args, or `code-change`'s state — and
;; answers every message with it; `save-state` hands it on. So a process that
;; migrates from a core module keeps that module's state, and gives it back.
(component
  (core module $m
    (memory (export "memory") 1)
    ;; Allocations bump from 8192 and wrap at 60 KiB: an input lives for one call.
    (global $heap (mut i32) (i32.const 8192))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $ptr i32)
      (if (i32.gt_u (i32.add (global.get $heap) (local.get 3)) (i32.const 61440))
        (then (global.set $heap (i32.const 8192))))
      (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                               (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $ptr) (local.get 3)))
      (local.get $ptr))
    ;; The kept text: (ptr, len) at 0, its bytes in [1024, 8192); "null" at first.
    (data (i32.const 0) "\00\04\00\00\04\00\00\00")
    (data (i32.const 1024) "null")
    ;; vsn: (ptr, len) at 8 of "c1" at 80.
    (data (i32.const 8) "\50\00\00\00\02\00\00\00")
    (data (i32.const 80) "c1")
    (func (export "vsn") (result i32) (i32.const 8))
    (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
    (func (export "boom") unreachable)
    (func (export "mirror") (param i32) (result i32) (local.get 0))
    (func (export "spin") (loop $forever (br $forever)))
    (func (export "echo") (param i32 i32) (result i32)
      (i32.store (i32.const 16) (local.get 0))
      (i32.store (i32.const 20) (local.get 1))
      (i32.const 16))
    (func (export "total") (param $ptr i32) (param $len i32) (result i32)
      (local $sum i32)
      (block $done
        (loop $next
          (br_if $done (i32.eqz (local.get $len)))
          (local.set $sum (i32.add (local.get $sum) (i32.load (local.get $ptr))))
          (local.set $ptr (i32.add (local.get $ptr) (i32.const 4)))
          (local.set $len (i32.sub (local.get $len) (i32.const 1)))
          (br $next)))
      (local.get $sum))
    ;; Keeps [ptr, ptr + len) as the text (up to 7 KiB).
    (func $keep (param $ptr i32) (param $len i32)
      (if (i32.gt_u (local.get $len) (i32.const 7168)) (then unreachable))
      (memory.copy (i32.const 1024) (local.get $ptr) (local.get $len))
      (i32.store (i32.const 4) (local.get $len)))
    ;; result<_, string> ok, at 24.
    (func $ok (result i32) (i32.store (i32.const 24) (i32.const 0)) (i32.const 24))
    (func (export "init") (param i32 i32) (result i32)
      (call $keep (local.get 0) (local.get 1))
      (call $ok))
    ;; result<string, string> ok(the text), at 32.
    (func (export "handle") (param i32 i32) (result i32)
      (i32.store (i32.const 32) (i32.const 0))
      (i32.store (i32.const 36) (i32.load (i32.const 0)))
      (i32.store (i32.const 40) (i32.load (i32.const 4)))
      (i32.const 32))
    (func (export "save-state") (result i32) (i32.const 0))
    ;; code-change(old-vsn, direction, state, extra): keeps state.
    (func (export "code-change") (param i32 i32 i32 i32 i32 i32 i32) (result i32)
      (call $keep (local.get 3) (local.get 4))
      (call $ok))
  )
  (core instance $i (instantiate $m))
  (func (export "add") (param "a" u32) (param "b" u32) (result u32) (canon lift (core func $i "add")))
  (func (export "echo") (param "text" string) (result string)
    (canon lift (core func $i "echo") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "boom") (canon lift (core func $i "boom")))
  (func (export "spin") (canon lift (core func $i "spin")))
  (func (export "vsn") (result string) (canon lift (core func $i "vsn") (memory (core memory $i "memory"))))
  (func $total (param "prices" (list u32)) (result u32)
    (canon lift (core func $i "total") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (instance $shop (export "total" (func $total)))
  (export "acme:store/shop@0.1.0" (instance $shop))
  (type $direction-def (enum "up" "down"))
  (export $direction "direction" (type $direction-def))
  (func (export "mirror") (param "d" $direction) (result $direction) (canon lift (core func $i "mirror")))
  (func $init (param "args" string) (result (result (error string)))
    (canon lift (core func $i "init") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func $handle (param "message" string) (result (result string (error string)))
    (canon lift (core func $i "handle") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func $save (result string) (canon lift (core func $i "save-state") (memory (core memory $i "memory"))))
  (func $code-change (param "old-vsn" string) (param "direction" $direction) (param "state" string)
    (param "extra" string) (result (result (error string)))
    (canon lift (core func $i "code-change") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (instance $process
    (export "direction" (type $direction))
    (export "init" (func $init))
    (export "handle" (func $handle))
    (export "save-state" (func $save))
    (export "code-change" (func $code-change)))
  (export "zest:guest/process@1.0.0" (instance $process))
)
