//! JSON ⇄ WIT values (CONTRACT.md §13): how `module.call` and nested calls
//! reach a component's functions with JSON text, by the functions' own types.
//!
//! A call's `args` is a JSON array of the parameters in order, or an object
//! keyed by their names (`null` or `[]` for none). Every value is checked
//! against its type before anything runs: a wrong one is refused with a message
//! naming the parameter (and the field, element or case inside it) and the
//! WIT type expected, never a trap.

use serde_json::{Map, Number, Value};
use wasmtime::component::types::{ComponentFunc, Type};
use wasmtime::component::Val;

use crate::wasm::component::describe;

/// The parameters of `func` from `args` (JSON text).
pub(crate) fn params(func: &ComponentFunc, args: &str) -> Result<Vec<Val>, String> {
    let args: Value = serde_json::from_str(args).map_err(|err| format!("not JSON: {err}"))?;
    let params: Vec<(&str, Type)> = func.params().collect();
    match args {
        Value::Null if params.is_empty() => Ok(Vec::new()),
        Value::Array(values) if values.len() == params.len() => {
            params.iter().zip(&values).map(|((name, ty), value)| to_val(ty, value, &Place::param(name))).collect()
        }
        Value::Array(values) => {
            Err(format!("expected {} argument(s) ({}), got {}", params.len(), names(&params), values.len()))
        }
        Value::Object(mut fields) => {
            let vals = params
                .iter()
                .map(|(name, ty)| match fields.remove(*name) {
                    Some(value) => to_val(ty, &value, &Place::param(name)),
                    None if matches!(ty, Type::Option(_)) => Ok(Val::Option(None)),
                    None => Err(format!("missing parameter `{name}` of type {}", describe(ty))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            match fields.keys().next() {
                Some(unknown) => Err(format!("no parameter named `{unknown}` (parameters: {})", names(&params))),
                None => Ok(vals),
            }
        }
        other => Err(format!(
            "args must be an array of the parameters in order or an object keyed by their names ({}), not {}",
            names(&params),
            kind(&other)
        )),
    }
}

/// `vals`, the parameters of `func`, as the JSON array `params` reads back.
pub(crate) fn params_json(func: &ComponentFunc, vals: &[Val]) -> Value {
    Value::Array(func.params().zip(vals).map(|((_, ty), val)| to_json(Some(&ty), val)).collect())
}

/// What a call of `func` returned, as JSON text: the result's JSON (`null` for
/// none); for a function returning `result<T, E>`, `Err` holds E's JSON when
/// it returned `err`.
pub(crate) fn results(func: &ComponentFunc, vals: &[Val]) -> Result<String, String> {
    let types: Vec<Type> = func.results().collect();
    let json = match (types.as_slice(), vals) {
        ([], _) => Value::Null,
        ([Type::Result(ty)], [Val::Result(result)]) => match result {
            Ok(val) => val.as_deref().map_or(Value::Null, |val| to_json(ty.ok().as_ref(), val)),
            Err(val) => {
                let err = val.as_deref().map_or(Value::Null, |val| to_json(ty.err().as_ref(), val));
                return Err(err.to_string());
            }
        },
        ([ty], [val]) => to_json(Some(ty), val),
        (types, vals) => Value::Array(types.iter().zip(vals).map(|(ty, val)| to_json(Some(ty), val)).collect()),
    };
    Ok(json.to_string())
}

/// Where a value sits, for messages: `parameter `user`, field `id``.
struct Place(String);

impl Place {
    fn param(name: &str) -> Place {
        Place(format!("parameter `{name}`"))
    }

    fn field(&self, name: &str) -> Place {
        Place(format!("{}, field `{name}`", self.0))
    }

    fn element(&self, index: usize) -> Place {
        Place(format!("{}, element {index}", self.0))
    }

    fn case(&self, name: &str) -> Place {
        Place(format!("{}, case `{name}`", self.0))
    }

    fn wrong(&self, ty: &Type, value: &Value) -> String {
        format!("{}: expected {}, got {}", self.0, describe(ty), kind(value))
    }

    fn error(&self, message: impl std::fmt::Display) -> String {
        format!("{}: {message}", self.0)
    }
}

/// The value of type `ty` that `json` writes.
fn to_val(ty: &Type, json: &Value, at: &Place) -> Result<Val, String> {
    let wrong = || at.wrong(ty, json);
    Ok(match ty {
        Type::Bool => Val::Bool(json.as_bool().ok_or_else(wrong)?),
        Type::S8 => Val::S8(integer(json, ty, at)?),
        Type::U8 => Val::U8(integer(json, ty, at)?),
        Type::S16 => Val::S16(integer(json, ty, at)?),
        Type::U16 => Val::U16(integer(json, ty, at)?),
        Type::S32 => Val::S32(integer(json, ty, at)?),
        Type::U32 => Val::U32(integer(json, ty, at)?),
        Type::S64 => Val::S64(integer(json, ty, at)?),
        Type::U64 => Val::U64(integer(json, ty, at)?),
        Type::Float32 => {
            let value = json.as_f64().ok_or_else(wrong)?;
            if value.is_finite() && value.abs() > f64::from(f32::MAX) {
                return Err(at.error(format!("{value} is out of the range of f32")));
            }
            Val::Float32(value as f32)
        }
        Type::Float64 => Val::Float64(json.as_f64().ok_or_else(wrong)?),
        Type::Char => {
            let text = json.as_str().ok_or_else(wrong)?;
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(char), None) => Val::Char(char),
                _ => return Err(at.error(format!("expected one character (char), got {text:?}"))),
            }
        }
        Type::String => Val::String(json.as_str().ok_or_else(wrong)?.to_string()),
        Type::List(list) => {
            let items = json.as_array().ok_or_else(wrong)?;
            Val::List(elements(&list.ty(), items, at)?)
        }
        Type::FixedLengthList(list) => {
            let items = json.as_array().ok_or_else(wrong)?;
            if items.len() != list.len() as usize {
                return Err(at.error(format!("expected {} elements, got {}", list.len(), items.len())));
            }
            Val::FixedLengthList(elements(&list.ty(), items, at)?)
        }
        Type::Map(map) => {
            let pairs = json.as_array().ok_or_else(wrong)?;
            let mut entries = Vec::with_capacity(pairs.len());
            for (index, pair) in pairs.iter().enumerate() {
                let place = at.element(index);
                match pair.as_array().map(Vec::as_slice) {
                    Some([key, value]) => {
                        entries.push((to_val(&map.key(), key, &place)?, to_val(&map.value(), value, &place)?))
                    }
                    _ => return Err(place.error(format!("expected a [key, value] pair, got {}", kind(pair)))),
                }
            }
            Val::Map(entries)
        }
        Type::Record(record) => {
            let mut fields = json.as_object().ok_or_else(wrong)?.clone();
            let mut vals = Vec::new();
            for field in record.fields() {
                let val = match fields.remove(field.name) {
                    Some(value) => to_val(&field.ty, &value, &at.field(field.name))?,
                    None if matches!(field.ty, Type::Option(_)) => Val::Option(None),
                    None => {
                        return Err(at.error(format!("missing field `{}` of type {}", field.name, describe(&field.ty))))
                    }
                };
                vals.push((field.name.to_string(), val));
            }
            if let Some(unknown) = fields.keys().next() {
                return Err(at.error(format!("no field named `{unknown}` in {}", describe(ty))));
            }
            Val::Record(vals)
        }
        Type::Tuple(tuple) => {
            let items = json.as_array().ok_or_else(wrong)?;
            if items.len() != tuple.types().len() {
                return Err(at.wrong(ty, json));
            }
            let vals = tuple.types().zip(items).enumerate().map(|(i, (ty, item))| to_val(&ty, item, &at.element(i)));
            Val::Tuple(vals.collect::<Result<_, _>>()?)
        }
        Type::Variant(variant) => {
            let object = json.as_object().ok_or_else(wrong)?;
            let tag = object.get("tag").and_then(Value::as_str).ok_or_else(|| {
                at.error(format!("expected {{\"tag\": CASE, \"val\": VALUE}} of {}, got {json}", describe(ty)))
            })?;
            let Some(case) = variant.cases().find(|case| case.name == tag) else {
                return Err(at.error(format!("no case `{tag}` in {}", describe(ty))));
            };
            if let Some(unknown) = object.keys().find(|key| *key != "tag" && *key != "val") {
                return Err(at.error(format!("unexpected key `{unknown}` in a variant")));
            }
            let payload = match (&case.ty, object.get("val")) {
                (Some(ty), Some(value)) => Some(Box::new(to_val(ty, value, &at.case(tag))?)),
                (Some(ty), None) => {
                    return Err(at.case(tag).error(format!("missing \"val\" of type {}", describe(ty))))
                }
                (None, None | Some(Value::Null)) => None,
                (None, Some(value)) => {
                    return Err(at.case(tag).error(format!("takes no \"val\", got {}", kind(value))))
                }
            };
            Val::Variant(tag.to_string(), payload)
        }
        Type::Enum(cases) => {
            let name = json.as_str().ok_or_else(wrong)?;
            if !cases.names().any(|case| case == name) {
                return Err(at.error(format!("no case `{name}` in {}", describe(ty))));
            }
            Val::Enum(name.to_string())
        }
        Type::Option(option) => {
            let inner = option.ty();
            match (json, &inner) {
                (Value::Null, _) => Val::Option(None),
                (Value::Object(object), Type::Option(_)) => match (object.get("some"), object.len()) {
                    (Some(value), 1) => Val::Option(Some(Box::new(to_val(&inner, value, at)?))),
                    _ => return Err(at.error(format!("expected null or {{\"some\": VALUE}} of {}", describe(ty)))),
                },
                (_, Type::Option(_)) => return Err(at.wrong(ty, json)),
                (value, inner) => Val::Option(Some(Box::new(to_val(inner, value, at)?))),
            }
        }
        Type::Result(result) => {
            let object = json.as_object().filter(|object| object.len() == 1).ok_or_else(|| {
                at.error(format!("expected {{\"ok\": VALUE}} or {{\"err\": VALUE}} of {}, got {json}", describe(ty)))
            })?;
            let side = |ty: Option<Type>, value: &Value, name: &str| -> Result<Option<Box<Val>>, String> {
                match (ty, value) {
                    (None, Value::Null) => Ok(None),
                    (None, value) => Err(at.error(format!("`{name}` takes no value, got {}", kind(value)))),
                    (Some(ty), value) => Ok(Some(Box::new(to_val(&ty, value, &at.case(name))?))),
                }
            };
            match (object.get("ok"), object.get("err")) {
                (Some(value), None) => Val::Result(Ok(side(result.ok(), value, "ok")?)),
                (None, Some(value)) => Val::Result(Err(side(result.err(), value, "err")?)),
                _ => return Err(at.wrong(ty, json)),
            }
        }
        Type::Flags(flags) => {
            let items = json.as_array().ok_or_else(wrong)?;
            let mut set = Vec::with_capacity(items.len());
            for item in items {
                let name = item.as_str().ok_or_else(wrong)?;
                if !flags.names().any(|flag| flag == name) {
                    return Err(at.error(format!("no flag `{name}` in {}", describe(ty))));
                }
                if !set.iter().any(|known: &String| known == name) {
                    set.push(name.to_string());
                }
            }
            Val::Flags(set)
        }
        Type::Own(_) | Type::Borrow(_) | Type::Future(_) | Type::Stream(_) | Type::ErrorContext => {
            return Err(at.error(format!("{} cannot be written in JSON", describe(ty))))
        }
    })
}

fn elements(ty: &Type, items: &[Value], at: &Place) -> Result<Vec<Val>, String> {
    items.iter().enumerate().map(|(index, item)| to_val(ty, item, &at.element(index))).collect()
}

/// An integer of type `ty` from a JSON number: a whole number within the
/// type's range (`3.0` is 3; `3.5` and `300` for a `u8` are refused).
fn integer<T: TryFrom<i64> + TryFrom<u64>>(json: &Value, ty: &Type, at: &Place) -> Result<T, String> {
    let Value::Number(number) = json else { return Err(at.wrong(ty, json)) };
    let out_of_range = || at.error(format!("{number} is out of the range of {}", describe(ty)));
    if let Some(value) = number.as_u64() {
        return T::try_from(value).map_err(|_| out_of_range());
    }
    if let Some(value) = number.as_i64() {
        return T::try_from(value).map_err(|_| out_of_range());
    }
    let value = number.as_f64().unwrap_or(f64::NAN);
    if value.fract() != 0.0 {
        return Err(at.error(format!("{number} is not a whole number ({})", describe(ty))));
    }
    // Whole but written as a float (`3.0`, `1e3`): within i64 or u64, or out of range.
    if (0.0..18_446_744_073_709_551_616.0).contains(&value) {
        T::try_from(value as u64).map_err(|_| out_of_range())
    } else if (-9_223_372_036_854_775_808.0..0.0).contains(&value) {
        T::try_from(value as i64).map_err(|_| out_of_range())
    } else {
        Err(out_of_range())
    }
}

/// The JSON of `val` (of type `ty`, when known: it tells a nested option or
/// result how to write itself).
fn to_json(ty: Option<&Type>, val: &Val) -> Value {
    match val {
        Val::Bool(value) => Value::Bool(*value),
        Val::S8(value) => Value::from(*value),
        Val::U8(value) => Value::from(*value),
        Val::S16(value) => Value::from(*value),
        Val::U16(value) => Value::from(*value),
        Val::S32(value) => Value::from(*value),
        Val::U32(value) => Value::from(*value),
        Val::S64(value) => Value::from(*value),
        Val::U64(value) => Value::from(*value),
        Val::Float32(value) => Number::from_f64(f64::from(*value)).map_or(Value::Null, Value::Number),
        Val::Float64(value) => Number::from_f64(*value).map_or(Value::Null, Value::Number),
        Val::Char(value) => Value::String(value.to_string()),
        Val::String(value) => Value::String(value.clone()),
        Val::List(items) | Val::FixedLengthList(items) => {
            let inner = match ty {
                Some(Type::List(list)) => Some(list.ty()),
                Some(Type::FixedLengthList(list)) => Some(list.ty()),
                _ => None,
            };
            Value::Array(items.iter().map(|item| to_json(inner.as_ref(), item)).collect())
        }
        Val::Map(entries) => {
            let (key, value) = match ty {
                Some(Type::Map(map)) => (Some(map.key()), Some(map.value())),
                _ => (None, None),
            };
            let pair = |(k, v): &(Val, Val)| Value::Array(vec![to_json(key.as_ref(), k), to_json(value.as_ref(), v)]);
            Value::Array(entries.iter().map(pair).collect())
        }
        Val::Record(fields) => {
            let types: Vec<Type> = match ty {
                Some(Type::Record(record)) => record.fields().map(|field| field.ty).collect(),
                _ => Vec::new(),
            };
            let object: Map<String, Value> = fields
                .iter()
                .enumerate()
                .map(|(index, (name, value))| (name.clone(), to_json(types.get(index), value)))
                .collect();
            Value::Object(object)
        }
        Val::Tuple(items) => {
            let types: Vec<Type> = match ty {
                Some(Type::Tuple(tuple)) => tuple.types().collect(),
                _ => Vec::new(),
            };
            Value::Array(items.iter().enumerate().map(|(index, item)| to_json(types.get(index), item)).collect())
        }
        Val::Variant(tag, payload) => {
            let case_ty = match ty {
                Some(Type::Variant(variant)) => variant.cases().find(|case| case.name == tag).and_then(|case| case.ty),
                _ => None,
            };
            let mut object = Map::new();
            object.insert("tag".into(), Value::String(tag.clone()));
            if let Some(payload) = payload {
                object.insert("val".into(), to_json(case_ty.as_ref(), payload));
            }
            Value::Object(object)
        }
        Val::Enum(name) => Value::String(name.clone()),
        Val::Option(None) => Value::Null,
        Val::Option(Some(inner)) => {
            let inner_ty = match ty {
                Some(Type::Option(option)) => Some(option.ty()),
                _ => None,
            };
            let json = to_json(inner_ty.as_ref(), inner);
            if matches!(inner_ty, Some(Type::Option(_))) || matches!(**inner, Val::Option(_)) {
                let mut object = Map::new();
                object.insert("some".into(), json);
                Value::Object(object)
            } else {
                json
            }
        }
        Val::Result(result) => {
            let (ok, err) = match ty {
                Some(Type::Result(result)) => (result.ok(), result.err()),
                _ => (None, None),
            };
            let (name, side, side_ty) = match result {
                Ok(value) => ("ok", value, ok),
                Err(value) => ("err", value, err),
            };
            let mut object = Map::new();
            object.insert(name.into(), side.as_deref().map_or(Value::Null, |value| to_json(side_ty.as_ref(), value)));
            Value::Object(object)
        }
        Val::Flags(names) => Value::Array(names.iter().map(|name| Value::String(name.clone())).collect()),
        Val::Resource(_) | Val::Future(_) | Val::Stream(_) | Val::ErrorContext(_) => Value::Null,
    }
}

/// `a: u32, b: string`.
fn names(params: &[(&str, Type)]) -> String {
    if params.is_empty() {
        return "none".to_string();
    }
    params.iter().map(|(name, ty)| format!("{name}: {}", describe(ty))).collect::<Vec<_>>().join(", ")
}

/// What kind of JSON value `value` is, for messages.
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(value) => format!("{value}"),
        Value::Number(number) => format!("the number {number}"),
        Value::String(text) if text.len() <= 40 => format!("the string {text:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(items) => format!("an array of {}", items.len()),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::component::types::ComponentItem;
    use wasmtime::component::Component;

    /// A function type holding every kind of value §13's table maps, read from
    /// a component that imports it (types of imports must be named, hence the
    /// type imports).
    fn every_kind() -> ComponentFunc {
        let wat = r#"(component
          (type $point-def (record (field "x" s32) (field "label" string) (field "note" (option string))))
          (import "point" (type $point (eq $point-def)))
          (type $color-def (enum "red" "green"))
          (import "color" (type $color (eq $color-def)))
          (type $shape-def (variant (case "circle" u32) (case "none")))
          (import "shape" (type $shape (eq $shape-def)))
          (type $perms-def (flags "read" "write"))
          (import "perms" (type $perms (eq $perms-def)))
          (import "f" (func
            (param "p" $point) (param "c" $color) (param "s" $shape) (param "fl" $perms)
            (param "o" (option (option u8))) (param "r" (result u32 (error string)))
            (param "t" (tuple s8 f64)) (param "ch" char) (param "l" (list string)) (param "b" bool)
            (param "big" u64) (param "f" f32)
            (result (result (option $point) (error string))))))"#;
        let engine = wasmtime::Engine::default();
        let wasm = wat::parse_str(wat).expect("the fixture parses");
        let component = Component::new(&engine, wasm).expect("the fixture compiles");
        match component.component_type().get_import(&engine, "f").map(|import| import.ty) {
            Some(ComponentItem::ComponentFunc(func)) => func,
            other => panic!("no function import: {other:?}"),
        }
    }

    #[test]
    fn every_kind_of_value_goes_from_json_to_wit_and_back_unchanged() {
        let func = every_kind();
        let args = serde_json::json!([
            {"x": -3, "label": "a", "note": null},
            "green",
            {"tag": "circle", "val": 7},
            ["write", "read"],
            {"some": null},
            {"err": "no"},
            [-128, 2.5],
            "é",
            ["x", "y"],
            true,
            18446744073709551615u64,
            1.5
        ]);
        let vals = params(&func, &args.to_string()).expect("every value fits its type");
        let back: Vec<Value> = func.params().zip(&vals).map(|((_, ty), val)| to_json(Some(&ty), val)).collect();
        assert_eq!(Value::Array(back), args);

        let by_name = serde_json::json!({
            "p": {"x": 1, "label": "b"}, "c": "red", "s": {"tag": "none"}, "fl": [], "o": {"some": 4},
            "r": {"ok": 1}, "t": [0, 0.0], "ch": "x", "l": [], "b": false, "big": 3.0, "f": 0
        });
        let vals = params(&func, &by_name.to_string()).expect("keyed by name; an absent option field is none");
        assert!(matches!(&vals[0], Val::Record(fields) if matches!(fields[2].1, Val::Option(None))));
        assert!(matches!(vals[4], Val::Option(Some(ref inner)) if matches!(**inner, Val::Option(Some(_)))));
        assert!(matches!(vals[10], Val::U64(3)), "a whole number written as a float");
    }

    #[test]
    fn a_result_of_ok_is_its_value_and_of_err_fails_with_its_json() {
        let func = every_kind();
        let point = Val::Record(vec![
            ("x".into(), Val::S32(1)),
            ("label".into(), Val::String("p".into())),
            ("note".into(), Val::Option(Some(Box::new(Val::String("n".into()))))),
        ]);
        let ok = Val::Result(Ok(Some(Box::new(Val::Option(Some(Box::new(point)))))));
        assert_eq!(results(&func, &[ok]).unwrap(), r#"{"label":"p","note":"n","x":1}"#);
        let none = Val::Result(Ok(Some(Box::new(Val::Option(None)))));
        assert_eq!(results(&func, &[none]).unwrap(), "null");
        let err = Val::Result(Err(Some(Box::new(Val::String("out of stock".into())))));
        assert_eq!(results(&func, &[err]).unwrap_err(), r#""out of stock""#);
    }

    #[test]
    fn a_value_that_does_not_fit_is_refused_naming_where_it_is() {
        let func = every_kind();
        let good = serde_json::json!([
            {"x": 0, "label": ""}, "red", {"tag": "none"}, [], null, {"ok": 0}, [0, 0], "c", [], true, 0, 0
        ]);
        let refused = |index: usize, value: Value| -> String {
            let mut args = good.clone();
            args[index] = value;
            params(&func, &args.to_string()).expect_err("refused")
        };
        assert!(params(&func, &good.to_string()).is_ok());
        let cases = [
            (0, serde_json::json!({"x": 0}), "parameter `p`: missing field `label` of type string"),
            (0, serde_json::json!({"x": 0, "label": "", "z": 1}), "no field named `z`"),
            (
                0,
                serde_json::json!({"x": 2147483648u64, "label": ""}),
                "field `x`: 2147483648 is out of the range of s32",
            ),
            (1, serde_json::json!("blue"), "parameter `c`: no case `blue` in enum { red, green }"),
            (2, serde_json::json!({"tag": "circle"}), "case `circle`: missing \"val\" of type u32"),
            (2, serde_json::json!({"tag": "none", "val": 1}), "takes no \"val\""),
            (3, serde_json::json!(["exec"]), "no flag `exec` in flags { read, write }"),
            (4, serde_json::json!(5), "parameter `o`: expected option<option<u8>>"),
            (4, serde_json::json!({"some": 300}), "300 is out of the range of u8"),
            (5, serde_json::json!({"ok": 1, "err": "x"}), "expected {\"ok\": VALUE} or {\"err\": VALUE}"),
            (6, serde_json::json!([1]), "parameter `t`: expected tuple<s8, f64>, got an array of 1"),
            (7, serde_json::json!("ab"), "expected one character (char), got \"ab\""),
            (8, serde_json::json!(["a", 1]), "parameter `l`, element 1: expected string, got the number 1"),
            (9, serde_json::json!("true"), "parameter `b`: expected bool"),
            (10, serde_json::json!(-1), "-1 is out of the range of u64"),
            (11, serde_json::json!(1e300), "is out of the range of f32"),
        ];
        for (index, value, expected) in cases {
            let message = refused(index, value.clone());
            assert!(message.contains(expected), "{value}: {message}\nexpected: {expected}");
        }
        assert!(params(&func, "[]").unwrap_err().contains("expected 12 argument(s)"));
        assert!(params(&func, "\"x\"").unwrap_err().contains("args must be an array"));
        assert!(params(&func, "{").unwrap_err().contains("not JSON"));
    }
}
