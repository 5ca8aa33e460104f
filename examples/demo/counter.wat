;; counter: a process with state that survives upgrades.
;;
;; Messages: "get" returns the count; {"add": N} adds N; anything else adds 1.
;; Every reply is {"count": N}. The state is the count, saved as a JSON number by
;; zest_state_save and read back by zest_code_change from {"state": N, ...}.
;; To watch a migration: change the vsn below to "2", reload, and the count stays.
(module
  (memory (export "memory") 1)
  (global $count (mut i64) (i64.const 0))
  ;; Inputs land at 8192 (up to 56 KiB); replies are written at 1024.
  (func (export "zest_alloc") (param i32) (result i32) i32.const 8192)

  (data (i32.const 0) "1")
  (data (i32.const 16) "\"state\"")
  (data (i32.const 32) "\"add\"")
  (data (i32.const 48) "{\"count\":")
  (data (i32.const 64) "\"get\"")
  (data (i32.const 80) "\"start\"")

  (func (export "zest_vsn") (result i64)
    i64.const 1)

  (func (export "zest_init") (param $ptr i32) (param $len i32) (result i64)
    (global.set $count (call $after (local.get $ptr) (local.get $len) (i32.const 80) (i32.const 7)))
    (i64.const 0))

  (func (export "zest_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $end i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (if (i32.ge_s (call $find (local.get $ptr) (local.get $end) (i32.const 32) (i32.const 5)) (i32.const 0))
      (then (global.set $count (i64.add (global.get $count)
              (call $after (local.get $ptr) (local.get $len) (i32.const 32) (i32.const 5)))))
      (else (if (i32.lt_s (call $find (local.get $ptr) (local.get $end) (i32.const 64) (i32.const 5)) (i32.const 0))
        (then (global.set $count (i64.add (global.get $count) (i64.const 1)))))))
    (call $reply))

  (func (export "zest_state_save") (result i64)
    (i64.or (i64.const 4398046511104) ;; 1024 << 32
            (i64.extend_i32_u (call $write_int (i32.const 1024) (global.get $count)))))

  (func (export "zest_code_change") (param $ptr i32) (param $len i32) (result i64)
    (global.set $count (call $after (local.get $ptr) (local.get $len) (i32.const 16) (i32.const 7)))
    (i64.const 0))

  ;; {"count":N} at 1024, packed.
  (func $reply (result i64) (local $len i32)
    (memory.copy (i32.const 1024) (i32.const 48) (i32.const 9))
    (local.set $len (i32.add (i32.const 9) (call $write_int (i32.const 1033) (global.get $count))))
    (i32.store8 (i32.add (i32.const 1024) (local.get $len)) (i32.const 125))
    (i64.or (i64.const 4398046511104) (i64.extend_i32_u (i32.add (local.get $len) (i32.const 1)))))

  ;; The index just past the first occurrence of the needle in [ptr, end), or -1.
  (func $find (param $ptr i32) (param $end i32) (param $needle i32) (param $nlen i32) (result i32)
    (local $j i32)
    (block $none
      (loop $scan
        (br_if $none (i32.gt_u (i32.add (local.get $ptr) (local.get $nlen)) (local.get $end)))
        (local.set $j (i32.const 0))
        (block $mismatch
          (loop $compare
            (br_if $mismatch (i32.ne (i32.load8_u (i32.add (local.get $ptr) (local.get $j)))
                                     (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (if (i32.eq (local.get $j) (local.get $nlen))
              (then (return (i32.add (local.get $ptr) (local.get $nlen)))))
            (br $compare)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $scan)))
    (i32.const -1))

  ;; The first integer after the needle in the input, or 0.
  (func $after (param $ptr i32) (param $len i32) (param $needle i32) (param $nlen i32) (result i64)
    (local $end i32) (local $at i32)
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (local.set $at (call $find (local.get $ptr) (local.get $end) (local.get $needle) (local.get $nlen)))
    (if (result i64) (i32.lt_s (local.get $at) (i32.const 0))
      (then (i64.const 0))
      (else (call $int (local.get $at) (local.get $end)))))

  ;; The first integer (an optional '-', then digits) in [ptr, end), or 0.
  (func $int (param $ptr i32) (param $end i32) (result i64)
    (local $c i32) (local $n i64) (local $neg i32)
    (block $found
      (loop $skip
        (if (i32.ge_u (local.get $ptr) (local.get $end)) (then (return (i64.const 0))))
        (local.set $c (i32.load8_u (local.get $ptr)))
        (br_if $found (i32.eq (local.get $c) (i32.const 45)))
        (br_if $found (i32.lt_u (i32.sub (local.get $c) (i32.const 48)) (i32.const 10)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $skip)))
    (if (i32.eq (local.get $c) (i32.const 45))
      (then (local.set $neg (i32.const 1))
            (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))))
    (block $done
      (loop $digits
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        (local.set $c (i32.sub (i32.load8_u (local.get $ptr)) (i32.const 48)))
        (br_if $done (i32.ge_u (local.get $c) (i32.const 10)))
        (local.set $n (i64.add (i64.mul (local.get $n) (i64.const 10)) (i64.extend_i32_u (local.get $c))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 1)))
        (br $digits)))
    (if (result i64) (local.get $neg)
      (then (i64.sub (i64.const 0) (local.get $n)))
      (else (local.get $n))))

  ;; Writes n in decimal at out; returns how many bytes it wrote.
  (func $write_int (param $out i32) (param $n i64) (result i32)
    (local $u i64) (local $i i32) (local $sign i32)
    (local.set $u (local.get $n))
    (if (i64.lt_s (local.get $n) (i64.const 0))
      (then (i32.store8 (local.get $out) (i32.const 45))
            (local.set $sign (i32.const 1))
            (local.set $u (i64.sub (i64.const 0) (local.get $n)))))
    ;; Digits are written backwards below 1000, then copied into place.
    (local.set $i (i32.const 1000))
    (loop $digit
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (local.get $i) (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $u) (i64.const 10)))))
      (local.set $u (i64.div_u (local.get $u) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $u) (i64.const 0))))
    (memory.copy (i32.add (local.get $out) (local.get $sign)) (local.get $i) (i32.sub (i32.const 1000) (local.get $i)))
    (i32.add (local.get $sign) (i32.sub (i32.const 1000) (local.get $i)))))
