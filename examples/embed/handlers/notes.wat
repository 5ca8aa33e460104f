;; notes: a handler written as a component. It keeps nothing itself: `POST
;; /notes` puts the body into the service's key-value store (the capability
;; `example:service/kv@1.0.0` the service gives its handlers) and answers it;
;; `GET /notes` answers what the store holds. Edit this file while requests
;; flow: the new code serves the next one, and the note is still there.
;;
;; The service calls `handle` with {"method", "path", "query", "body"}: for a
;; component, an object keyed by its parameters' names.
(component
  (import "example:service/kv@1.0.0" (instance $kv
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
  (core module $notes
    (import "libc" "memory" (memory 1))
    (import "kv" "get" (func $get (param i32 i32 i32)))
    (import "kv" "set" (func $set (param i32 i32 i32 i32)))
    (data (i32.const 100) "note")
    (data (i32.const 120) "(nothing noted yet)")
    ;; handle(method, path, query, body) -> string, its (ptr, len) at 200.
    (func (export "handle")
      (param $method i32) (param $method-len i32) (param $path i32) (param $path-len i32)
      (param $query-some i32) (param $query i32) (param $query-len i32) (param $body i32) (param $body-len i32)
      (result i32)
      (if (i32.eq (local.get $method-len) (i32.const 4)) ;; POST
        (then
          (call $set (i32.const 100) (i32.const 4) (local.get $body) (local.get $body-len))
          (i32.store (i32.const 200) (local.get $body))
          (i32.store (i32.const 204) (local.get $body-len))
          (return (i32.const 200))))
      ;; The note: an option<string> at 208 (its case, then the text at 212).
      (call $get (i32.const 100) (i32.const 4) (i32.const 208))
      (if (i32.eqz (i32.load8_u (i32.const 208)))
        (then
          (i32.store (i32.const 200) (i32.const 120))
          (i32.store (i32.const 204) (i32.const 19)))
        (else
          (i32.store (i32.const 200) (i32.load (i32.const 212)))
          (i32.store (i32.const 204) (i32.load (i32.const 216)))))
      (i32.const 200)))
  (core instance $i (instantiate $notes
    (with "libc" (instance $libc))
    (with "kv" (instance (export "get" (func $get)) (export "set" (func $set))))))
  (func (export "handle")
    (param "method" string) (param "path" string) (param "query" (option string)) (param "body" string)
    (result string)
    (canon lift (core func $i "handle") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
)
