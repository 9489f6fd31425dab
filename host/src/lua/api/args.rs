//! Argument checking with HAProxy-style errors ([`Args`]) and the return
//! values every API function shares (`one`, `none`, samples, errors).

use http::{HeaderName, HeaderValue};
use mlua::{Function, Lua, MultiValue, Table, Value};

use crate::lua::runtime::{ERR_MARK, mark};
use crate::txn::Sample;

/// A function's arguments, with HAProxy-style errors; `skip` self arguments are not counted.
pub(crate) struct Args<'a> {
    v: &'a MultiValue,
    f: &'static str,
    skip: usize,
}

impl<'a> Args<'a> {
    pub(crate) fn new(v: &'a MultiValue, f: &'static str, skip: usize) -> Args<'a> {
        Args { v, f, skip }
    }

    /// Argument `n` (1-based, after self), `Nil` if absent.
    pub(crate) fn get(&self, n: usize) -> &'a Value {
        self.v.get(self.skip + n - 1).unwrap_or(&Value::Nil)
    }

    pub(crate) fn bad(&self, n: usize, expected: &str) -> mlua::Error {
        mlua::Error::runtime(format!(
            "bad argument #{n} to '{}' ({expected} expected, got {})",
            self.f,
            self.get(n).type_name()
        ))
    }

    pub(crate) fn err(&self, n: usize, msg: impl std::fmt::Display) -> mlua::Error {
        mlua::Error::runtime(format!("bad argument #{n} to '{}' ({msg})", self.f))
    }

    /// A string argument (numbers are accepted and written out, as Lua does).
    pub(crate) fn bytes(&self, n: usize) -> mlua::Result<Vec<u8>> {
        match self.get(n) {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            Value::Integer(i) => Ok(i.to_string().into_bytes()),
            Value::Number(x) => Ok(x.to_string().into_bytes()),
            _ => Err(self.bad(n, "string")),
        }
    }

    pub(crate) fn string(&self, n: usize) -> mlua::Result<String> {
        let b = self.bytes(n)?;
        String::from_utf8(b).map_err(|_| self.err(n, "invalid UTF-8"))
    }

    pub(crate) fn opt_string(&self, n: usize) -> mlua::Result<Option<String>> {
        match self.get(n) {
            Value::Nil => Ok(None),
            _ => self.string(n).map(Some),
        }
    }

    pub(crate) fn int(&self, n: usize) -> mlua::Result<i64> {
        match self.get(n) {
            Value::Integer(i) => Ok(*i),
            Value::Number(x) if x.fract() == 0.0 && x.is_finite() => Ok(*x as i64),
            Value::String(s) => s
                .to_str()
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| self.bad(n, "integer")),
            _ => Err(self.bad(n, "integer")),
        }
    }

    /// An integer argument converted as Lua's `luaL_checkinteger` does (what
    /// HAProxy's C functions use): an integral float or a string holding a
    /// number is accepted, with Lua's messages otherwise.
    pub(crate) fn checkinteger(&self, n: usize) -> mlua::Result<i64> {
        let as_int = |x: f64| {
            (x.fract() == 0.0 && x >= -(2f64.powi(63)) && x < 2f64.powi(63)).then_some(x as i64)
        };
        match self.get(n) {
            Value::Integer(i) => Ok(*i),
            Value::Number(x) => {
                as_int(*x).ok_or_else(|| self.err(n, "number has no integer representation"))
            }
            Value::String(s) => {
                let text = s.to_str().map_err(|_| self.bad(n, "number"))?;
                let t = text.trim();
                if let Ok(i) = t.parse::<i64>() {
                    return Ok(i);
                }
                match t.parse::<f64>() {
                    Ok(x) => {
                        as_int(x).ok_or_else(|| self.err(n, "number has no integer representation"))
                    }
                    Err(_) => Err(self.bad(n, "number")),
                }
            }
            _ => Err(self.bad(n, "number")),
        }
    }

    pub(crate) fn opt_int(&self, n: usize) -> mlua::Result<Option<i64>> {
        match self.get(n) {
            Value::Nil => Ok(None),
            _ => self.int(n).map(Some),
        }
    }

    pub(crate) fn table(&self, n: usize) -> mlua::Result<Table> {
        match self.get(n) {
            Value::Table(t) => Ok(t.clone()),
            _ => Err(self.bad(n, "table")),
        }
    }

    pub(crate) fn func(&self, n: usize) -> mlua::Result<Function> {
        match self.get(n) {
            Value::Function(f) => Ok(f.clone()),
            _ => Err(self.bad(n, "function")),
        }
    }

    /// Runs `f` on a string argument's bytes, borrowed from Lua (no copy) when it is a string.
    fn with_bytes<R>(&self, n: usize, f: impl FnOnce(&[u8]) -> R) -> mlua::Result<R> {
        match self.get(n) {
            Value::String(s) => Ok(f(&s.as_bytes())),
            _ => self.bytes(n).map(|b| f(&b)),
        }
    }

    pub(crate) fn header_name(&self, n: usize) -> mlua::Result<HeaderName> {
        self.with_bytes(n, HeaderName::from_bytes)?
            .map_err(|_| self.err(n, "invalid header name"))
    }

    pub(crate) fn header_value(&self, n: usize) -> mlua::Result<HeaderValue> {
        self.with_bytes(n, HeaderValue::from_bytes)?.map_err(|_| {
            self.err(
                n,
                "invalid header value: control characters are not allowed",
            )
        })
    }
}

pub(super) fn func<F>(lua: &Lua, f: F) -> mlua::Result<Function>
where
    F: Fn(&Lua, MultiValue) -> mlua::Result<MultiValue> + 'static,
{
    lua.create_function(move |lua, args: MultiValue| f(lua, args).or_else(|e| error_values(lua, e)))
}

/// A failed API call as `(ERR_MARK, message)` for the Lua wrapper to raise.
pub(crate) fn error_values(lua: &Lua, e: mlua::Error) -> mlua::Result<MultiValue> {
    let msg = crate::lua::runtime::describe(&e);
    let Ok(s) = lua.create_string(&msg) else {
        return Err(e);
    };
    let mut m = MultiValue::with_capacity(2);
    m.push_back(Value::LightUserData(mark(&ERR_MARK)));
    m.push_back(Value::String(s));
    Ok(m)
}

pub(super) fn none() -> mlua::Result<MultiValue> {
    Ok(MultiValue::new())
}

/// One return value.
pub(crate) fn one(v: Value) -> mlua::Result<MultiValue> {
    let mut m = MultiValue::with_capacity(1);
    m.push_back(v);
    Ok(m)
}

/// A sample as a Lua value (`stringify`: always a string, "" for none).
pub(crate) fn sample_to_lua(lua: &Lua, s: Option<Sample>, stringify: bool) -> mlua::Result<Value> {
    Ok(match (s, stringify) {
        (None, false) => Value::Nil,
        (None, true) => Value::String(lua.create_string("")?),
        (Some(Sample::Str(s)), _) => Value::String(lua.create_string(s)?),
        (Some(Sample::Bin(b)), _) => Value::String(lua.create_string(b)?),
        (Some(s), true) => Value::String(lua.create_string(s.to_text())?),
        (Some(Sample::Int(i)), false) => Value::Integer(i),
        (Some(Sample::Bool(b)), false) => Value::Boolean(b),
        (Some(Sample::Ip(ip)), false) => Value::String(lua.create_string(ip.to_string())?),
    })
}
