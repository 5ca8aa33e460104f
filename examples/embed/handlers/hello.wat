;; GET /hello: a greeting. Edit the message while the service runs (keep it
;; JSON); the next request answers with it, no restart.
(module
  (memory (export "memory") 1)
  ;; Requests are written at 4096; the response lives at 0.
  (func (export "zest_alloc") (param i32) (result i32) i32.const 4096)
  (data (i32.const 0) "{\"message\":\"Hello from a zest module!\",\"version\":1}")
  ;; Returns the response packed as (ptr << 32) | len: ptr 0, len up to the
  ;; first zero byte (memory past the data is zero).
  (func (export "handle") (param i32 i32) (result i64) (local $len i32)
    (block $done
      (loop $scan
        (br_if $done (i32.eqz (i32.load8_u (local.get $len))))
        (local.set $len (i32.add (local.get $len) (i32.const 1)))
        (br $scan)))
    (i64.extend_i32_u (local.get $len))))
