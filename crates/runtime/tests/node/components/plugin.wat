;; plugin: a component of the `plugin` world (`zest:guest/dynamic`): it serves
;; `hello` (answers its args) and `bye` (fails with "bye bye") through `invoke`,
;; and has one function of its own, `ping() -> string` ("pong").
(component
  (core module $m
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 8192))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $ptr i32)
      (if (i32.gt_u (i32.add (global.get $heap) (local.get 3)) (i32.const 61440))
        (then (global.set $heap (i32.const 8192))))
      (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                               (i32.sub (i32.const 0) (local.get 2))))
      (global.set $heap (i32.add (local.get $ptr) (local.get 3)))
      (local.get $ptr))
    ;; functions(): the list (ptr 300, len 2) at 288, its strings at 400.
    (data (i32.const 288) "\2c\01\00\00\02\00\00\00")
    (data (i32.const 300) "\90\01\00\00\05\00\00\00\95\01\00\00\03\00\00\00")
    (data (i32.const 400) "hellobye")
    (data (i32.const 420) "bye bye")
    (data (i32.const 440) "\"pong\"")
    (data (i32.const 460) "\b8\01\00\00\06\00\00\00")
    (func (export "functions") (result i32) (i32.const 288))
    (func (export "ping") (result i32) (i32.const 460))
    ;; invoke(function, args): err("bye bye") for a 3-letter name, else ok(args).
    (func (export "invoke") (param $fptr i32) (param $flen i32) (param $aptr i32) (param $alen i32) (result i32)
      (if (i32.eq (local.get $flen) (i32.const 3))
        (then
          (i32.store (i32.const 32) (i32.const 1))
          (i32.store (i32.const 36) (i32.const 420))
          (i32.store (i32.const 40) (i32.const 7)))
        (else
          (i32.store (i32.const 32) (i32.const 0))
          (i32.store (i32.const 36) (local.get $aptr))
          (i32.store (i32.const 40) (local.get $alen))))
      (i32.const 32)))
  (core instance $i (instantiate $m))
  (func $functions (result (list string)) (canon lift (core func $i "functions") (memory (core memory $i "memory"))))
  (func $invoke (param "function" string) (param "args" string) (result (result string (error string)))
    (canon lift (core func $i "invoke") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (instance $dynamic (export "functions" (func $functions)) (export "invoke" (func $invoke)))
  (export "zest:guest/dynamic@1.0.0" (instance $dynamic))
  (func (export "ping") (result string) (canon lift (core func $i "ping") (memory (core memory $i "memory"))))
)
