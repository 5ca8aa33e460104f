;; clock: the demo's time source. `now` → {"now_ms": <wall-clock ms since the epoch>}.
(module
  (import "zest" "now_ms" (func $now_ms (result i64)))
  (memory (export "memory") 1)
  ;; Inputs go to a fixed area; this module ignores them.
  (func (export "zest_alloc") (param i32) (result i32) i32.const 4096)
  (data (i32.const 0) "{\"now_ms\":")
  ;; Writes {"now_ms":N} at 0 and returns it packed.
  (func (export "now") (param i32 i32) (result i64)
    (local $n i64) (local $digits i32) (local $end i32) (local $i i32)
    (local.set $n (call $now_ms))
    ;; Digits go backwards into 64..96, then are copied after the prefix.
    (local.set $i (i32.const 96))
    (loop $digit
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (local.get $i)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $n) (i64.const 10)))))
      (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $n) (i64.const 0))))
    (local.set $digits (i32.sub (i32.const 96) (local.get $i)))
    (memory.copy (i32.const 10) (local.get $i) (local.get $digits))
    (local.set $end (i32.add (i32.const 10) (local.get $digits)))
    (i32.store8 (local.get $end) (i32.const 125)) ;; }
    (i64.extend_i32_u (i32.add (local.get $end) (i32.const 1))))
  (func (export "zest_vsn") (result i64) i64.const 0x0000020000000005)
  (data (i32.const 512) "1.0.0"))
