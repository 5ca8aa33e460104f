//! Generated WIT types and JSON values for the fuzz target `wit_json`: a
//! component (WAT) importing a function `f` of generated parameter types, and
//! for each parameter a JSON value that fits its type as CONTRACT.md §13
//! writes values — and, now and then, one changed so that it may not.

use arbitrary::{Result, Unstructured};
use serde_json::{json, Map, Value};

/// How deep types nest.
const MAX_DEPTH: u32 = 3;

/// A generated type: its WAT, and how to make a value of it.
#[derive(Debug, Clone)]
enum Ty {
    Bool,
    Int {
        wat: &'static str,
        min: i128,
        max: i128,
    },
    Float {
        wat: &'static str,
    },
    Char,
    String,
    List(Box<Ty>),
    Tuple(Vec<Ty>),
    Option(Box<Ty>),
    Result(Option<Box<Ty>>, Option<Box<Ty>>),
    /// Named types, by their index among the component's type imports.
    Record(usize, Vec<(String, Ty)>),
    Variant(usize, Vec<(String, Option<Ty>)>),
    Enum(usize, Vec<String>),
    Flags(usize, Vec<String>),
}

const INTS: [(&str, i128, i128); 8] = [
    ("s8", i8::MIN as i128, i8::MAX as i128),
    ("u8", 0, u8::MAX as i128),
    ("s16", i16::MIN as i128, i16::MAX as i128),
    ("u16", 0, u16::MAX as i128),
    ("s32", i32::MIN as i128, i32::MAX as i128),
    ("u32", 0, u32::MAX as i128),
    ("s64", i64::MIN as i128, i64::MAX as i128),
    ("u64", 0, u64::MAX as i128),
];

/// The component and, per parameter, a fitting value; and whether a value was
/// changed after (then it may not fit).
pub struct Case {
    pub component: String,
    pub args: Value,
    pub changed: bool,
}

pub fn case(u: &mut Unstructured<'_>) -> Result<Case> {
    let mut named = Vec::new();
    let count = u.int_in_range(1..=4)?;
    let params: Vec<Ty> = (0..count).map(|_| ty(u, 0, &mut named)).collect::<Result<_>>()?;
    let mut component = String::from("(component\n");
    for (index, definition) in named.iter().enumerate() {
        component.push_str(&format!(
            "  (type $t{index}-def {definition})\n  (import \"t{index}\" (type $t{index} (eq $t{index}-def)))\n"
        ));
    }
    let wat_params: Vec<String> =
        params.iter().enumerate().map(|(i, ty)| format!("(param \"p{i}\" {})", wat(ty))).collect();
    component.push_str(&format!("  (import \"f\" (func {}))\n)", wat_params.join(" ")));
    let mut args: Vec<Value> = params.iter().map(|ty| value(u, ty)).collect::<Result<_>>()?;
    let changed = u.ratio(1, 4)?;
    if changed {
        let at = u.choose_index(args.len())?;
        args[at] = junk(u)?;
    }
    Ok(Case { component, args: Value::Array(args), changed })
}

/// A name of a field or a case: a WIT identifier.
fn name(u: &mut Unstructured<'_>, taken: &[String]) -> Result<String> {
    const NAMES: [&str; 8] = ["a", "b", "id", "label", "x-y", "ok", "none", "some"];
    let base = NAMES[u.choose_index(NAMES.len())?];
    let mut name = base.to_string();
    let mut n = 1;
    while taken.contains(&name) {
        name = format!("{base}{n}");
        n += 1;
    }
    Ok(name)
}

fn ty(u: &mut Unstructured<'_>, depth: u32, named: &mut Vec<String>) -> Result<Ty> {
    let leaf = depth >= MAX_DEPTH;
    let pick = if leaf { u.int_in_range(0..=3)? } else { u.int_in_range(0..=12)? };
    Ok(match pick {
        0 => Ty::Bool,
        1 => {
            let (wat, min, max) = INTS[u.choose_index(INTS.len())?];
            Ty::Int { wat, min, max }
        }
        2 => Ty::Float { wat: if u.arbitrary()? { "f32" } else { "f64" } },
        3 => {
            if u.arbitrary()? {
                Ty::Char
            } else {
                Ty::String
            }
        }
        4 => Ty::List(Box::new(ty(u, depth + 1, named)?)),
        5 => {
            let count = u.int_in_range(1..=3)?;
            Ty::Tuple((0..count).map(|_| ty(u, depth + 1, named)).collect::<Result<_>>()?)
        }
        6 => Ty::Option(Box::new(ty(u, depth + 1, named)?)),
        7 => {
            let side = |u: &mut Unstructured<'_>, named: &mut Vec<String>| -> Result<Option<Box<Ty>>> {
                Ok(if u.arbitrary()? { Some(Box::new(ty(u, depth + 1, named)?)) } else { None })
            };
            Ty::Result(side(u, named)?, side(u, named)?)
        }
        8 | 9 => {
            let count = u.int_in_range(1..=3)?;
            let mut fields: Vec<(String, Ty)> = Vec::new();
            for _ in 0..count {
                let taken: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
                fields.push((name(u, &taken)?, ty(u, depth + 1, named)?));
            }
            let definition = format!(
                "(record {})",
                fields.iter().map(|(n, t)| format!("(field \"{n}\" {})", wat(t))).collect::<Vec<_>>().join(" ")
            );
            named.push(definition);
            Ty::Record(named.len() - 1, fields)
        }
        10 => {
            let count = u.int_in_range(1..=3)?;
            let mut cases: Vec<(String, Option<Ty>)> = Vec::new();
            for _ in 0..count {
                let taken: Vec<String> = cases.iter().map(|(n, _)| n.clone()).collect();
                let payload = if u.arbitrary()? { Some(ty(u, depth + 1, named)?) } else { None };
                cases.push((name(u, &taken)?, payload));
            }
            let definition = format!(
                "(variant {})",
                cases
                    .iter()
                    .map(|(n, t)| match t {
                        Some(t) => format!("(case \"{n}\" {})", wat(t)),
                        None => format!("(case \"{n}\")"),
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            named.push(definition);
            Ty::Variant(named.len() - 1, cases)
        }
        11 | 12 => {
            let count = u.int_in_range(1..=3)?;
            let mut names: Vec<String> = Vec::new();
            for _ in 0..count {
                let picked = name(u, &names)?;
                names.push(picked);
            }
            let quoted = names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(" ");
            if pick == 11 {
                named.push(format!("(enum {quoted})"));
                Ty::Enum(named.len() - 1, names)
            } else {
                named.push(format!("(flags {quoted})"));
                Ty::Flags(named.len() - 1, names)
            }
        }
        _ => unreachable!("picked in range"),
    })
}

fn wat(ty: &Ty) -> String {
    match ty {
        Ty::Bool => "bool".into(),
        Ty::Int { wat, .. } | Ty::Float { wat } => (*wat).into(),
        Ty::Char => "char".into(),
        Ty::String => "string".into(),
        Ty::List(inner) => format!("(list {})", wat(inner)),
        Ty::Tuple(items) => format!("(tuple {})", items.iter().map(wat).collect::<Vec<_>>().join(" ")),
        Ty::Option(inner) => format!("(option {})", wat(inner)),
        Ty::Result(ok, err) => {
            let ok = ok.as_ref().map(|t| format!(" {}", wat(t))).unwrap_or_default();
            let err = err.as_ref().map(|t| format!(" (error {})", wat(t))).unwrap_or_default();
            format!("(result{ok}{err})")
        }
        Ty::Record(i, _) | Ty::Variant(i, _) | Ty::Enum(i, _) | Ty::Flags(i, _) => format!("$t{i}"),
    }
}

/// A JSON value of type `ty`, written as the mapping writes it back.
fn value(u: &mut Unstructured<'_>, ty: &Ty) -> Result<Value> {
    Ok(match ty {
        Ty::Bool => Value::Bool(u.arbitrary()?),
        Ty::Int { min, max, .. } => {
            let n = u.int_in_range(*min..=*max)?;
            if n < 0 {
                json!(n as i64)
            } else {
                json!(n as u64)
            }
        }
        Ty::Float { wat } => {
            let x = f64::from(u.int_in_range(-1000i32..=1000)?) / 8.0;
            if *wat == "f32" {
                json!(f64::from(x as f32))
            } else {
                json!(x)
            }
        }
        Ty::Char => Value::String(char::from_u32(u.int_in_range(32u32..=0x2fff)?).unwrap_or('x').to_string()),
        Ty::String => Value::String(u.arbitrary::<String>()?),
        Ty::List(inner) => {
            let count = u.int_in_range(0..=3)?;
            Value::Array((0..count).map(|_| value(u, inner)).collect::<Result<_>>()?)
        }
        Ty::Tuple(items) => Value::Array(items.iter().map(|t| value(u, t)).collect::<Result<_>>()?),
        Ty::Option(inner) => {
            if u.arbitrary()? {
                Value::Null
            } else if matches!(**inner, Ty::Option(_)) {
                json!({"some": value(u, inner)?})
            } else {
                value(u, inner)?
            }
        }
        Ty::Result(ok, err) => {
            let (key, side) = if u.arbitrary()? { ("ok", ok) } else { ("err", err) };
            let inner = match side {
                Some(t) => value(u, t)?,
                None => Value::Null,
            };
            json!({ key: inner })
        }
        Ty::Record(_, fields) => {
            let mut object = Map::new();
            for (n, t) in fields {
                object.insert(n.clone(), value(u, t)?);
            }
            Value::Object(object)
        }
        Ty::Variant(_, cases) => {
            let (tag, payload) = &cases[u.choose_index(cases.len())?];
            match payload {
                Some(t) => json!({"tag": tag, "val": value(u, t)?}),
                None => json!({"tag": tag}),
            }
        }
        Ty::Enum(_, names) => Value::String(names[u.choose_index(names.len())?].clone()),
        Ty::Flags(_, names) => {
            Value::Array(names.iter().filter(|_| u.arbitrary().unwrap_or(false)).map(|n| json!(n)).collect())
        }
    })
}

/// Any JSON value, small.
fn junk(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=6)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => json!(u.arbitrary::<i64>()?),
        3 => json!(f64::from(u.arbitrary::<i16>()?) / 3.0),
        4 => Value::String(u.arbitrary::<String>()?),
        5 => Value::Array(vec![junk(u)?, junk(u)?]),
        _ => json!({ u.arbitrary::<String>()?: junk(u)? }),
    })
}
