//! `portcullis_v1`: portcullis's own host functions, for what Proxy-Wasm
//! lacks — stick tables, SHA-2 and HMAC-SHA-2, structured logging — and the
//! same operations for plain Proxy-Wasm filters through
//! `proxy_call_foreign_function`. The reference is `docs/ABI.md`.
//!
//! Statuses are the Proxy-Wasm ones. Every pointer and length is checked
//! against guest memory; every name and number is validated.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};
use wasmtime::{Caller, Linker};

use super::{mem_state, pairs, refuse, tri};
use crate::wasm::instance::HostState;
use crate::wasm::memory::{self, HostResult, copy_out};
use crate::wasm::stick::StickFail;
use crate::wasm::{Status, StickApi};

type C<'a> = Caller<'a, HostState>;

/// The import module name.
pub const MODULE: &str = "portcullis_v1";
/// The version `abi_version` returns.
pub const VERSION: u32 = 1;

/// SHA-2 digest of `data` with `alg` (224, 256, 384 or 512).
pub fn sha2_digest(alg: u32, data: &[u8]) -> Option<Vec<u8>> {
    Some(match alg {
        224 => Sha224::digest(data).to_vec(),
        256 => Sha256::digest(data).to_vec(),
        384 => Sha384::digest(data).to_vec(),
        512 => Sha512::digest(data).to_vec(),
        _ => return None,
    })
}

fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    let mut m = <M as Mac>::new_from_slice(key).ok()?;
    m.update(data);
    Some(m.finalize().into_bytes().to_vec())
}

/// HMAC of `data` under `key` with SHA-2 `alg` (224, 256, 384 or 512).
pub fn hmac_sha2(alg: u32, key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    match alg {
        224 => mac::<Hmac<Sha224>>(key, data),
        256 => mac::<Hmac<Sha256>>(key, data),
        384 => mac::<Hmac<Sha384>>(key, data),
        512 => mac::<Hmac<Sha512>>(key, data),
        _ => None,
    }
}

fn stick_status(st: &mut HostState, e: StickFail) -> u32 {
    let s = match &e {
        StickFail::NotFound => Status::NotFound,
        StickFail::BadArgument(_) => Status::BadArgument,
        StickFail::Full(_) => Status::InternalFailure,
    };
    st.last_error = Some(e.to_string());
    if s == Status::BadArgument {
        st.root
            .plugin
            .stats
            .bad_host_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    s.raw()
}

fn stick_api(st: &mut HostState) -> Result<std::sync::Arc<dyn StickApi>, u32> {
    match &st.root.plugin.spec.stick {
        Some(a) => Ok(std::sync::Arc::clone(a)),
        None => {
            st.last_error = Some("no stick table is declared".into());
            Err(Status::BadArgument.raw())
        }
    }
}

/// Reads (table, key, data) strings for a stick call.
fn strs3(
    mem: &[u8],
    a: (u32, u32),
    b: (u32, u32),
    c: (u32, u32),
) -> Result<(&str, &str, &str), Status> {
    Ok((
        memory::read_str(mem, a.0, a.1)?,
        memory::read_str(mem, b.0, b.1)?,
        memory::read_str(mem, c.0, c.1)?,
    ))
}

/// The body of `stick_get`/`stick_add`/`stick_set`: reads the table, key
/// and data names (`names`), checks the result pointer `ret` (if the call
/// has one) before touching the table, runs `op` and writes its `u64`.
fn stick_call(
    c: &mut C<'_>,
    what: &'static str,
    names: [(u32, u32); 3],
    ret: Option<u32>,
    op: impl FnOnce(&dyn StickApi, &str, &str, &str) -> Result<Option<u64>, StickFail>,
) -> HostResult {
    let Some((mem, st)) = mem_state(c) else {
        return Ok(Status::InternalFailure.raw());
    };
    let [t, k, d] = names;
    let (t, k, d) = tri!(st, strs3(mem, t, k, d), &format!("{what}: bad string"));
    if let Some(ret) = ret {
        tri!(
            st,
            memory::check(mem, ret, 8),
            &format!("{what}: bad result pointer")
        );
    }
    let api = match stick_api(st) {
        Ok(a) => a,
        Err(s) => return Ok(s),
    };
    match op(&*api, t, k, d) {
        Ok(Some(v)) => {
            if let Some(ret) = ret {
                tri!(
                    st,
                    memory::write_u64(mem, ret, v),
                    &format!("{what}: bad result pointer")
                );
            }
            Ok(Status::Ok.raw())
        }
        Ok(None) => Ok(Status::Ok.raw()),
        Err(e) => Ok(stick_status(st, e)),
    }
}

/// Registers the `portcullis_v1` functions.
pub fn add(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(MODULE, "abi_version", |_c: C<'_>| -> u32 { VERSION })?;
    l.func_wrap(
        MODULE,
        "log",
        |mut c: C<'_>, level: u32, mptr: u32, mlen: u32, fptr: u32, flen: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            if level > 5 {
                return Ok(refuse(st, Status::BadArgument, "log: level above 5"));
            }
            let msg = tri!(
                st,
                memory::read(mem, mptr, mlen.min(super::proxy_wasm::MAX_LOG_LINE)),
                "log: message out of bounds"
            );
            let raw = tri!(
                st,
                memory::read(mem, fptr, flen),
                "log: fields out of bounds"
            );
            let fields = tri!(st, pairs::decode(raw), "log: invalid field pairs");
            let mut text = String::new();
            for (k, v) in fields {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(&String::from_utf8_lossy(k));
                text.push('=');
                text.push_str(&String::from_utf8_lossy(v));
            }
            let msg = String::from_utf8_lossy(msg).into_owned();
            st.guest_log(level, &msg, &text);
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        MODULE,
        "sha2",
        |mut c: C<'_>, alg: u32, dptr: u32, dlen: u32, out: u32, out_len: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let data = tri!(
                st,
                memory::read(mem, dptr, dlen),
                "sha2: data out of bounds"
            );
            let Some(d) = sha2_digest(alg, data) else {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "sha2: algorithm must be 224, 256, 384 or 512",
                ));
            };
            if (out_len as usize) < d.len() {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "sha2: output buffer too small",
                ));
            }
            tri!(
                st,
                memory::write(mem, out, &d),
                "sha2: output out of bounds"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        MODULE,
        "hmac_sha2",
        |mut c: C<'_>,
         alg: u32,
         kptr: u32,
         klen: u32,
         dptr: u32,
         dlen: u32,
         out: u32,
         out_len: u32|
         -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let key = tri!(
                st,
                memory::read(mem, kptr, klen),
                "hmac_sha2: key out of bounds"
            );
            let data = tri!(
                st,
                memory::read(mem, dptr, dlen),
                "hmac_sha2: data out of bounds"
            );
            let Some(d) = hmac_sha2(alg, key, data) else {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "hmac_sha2: algorithm must be 224, 256, 384 or 512",
                ));
            };
            if (out_len as usize) < d.len() {
                return Ok(refuse(
                    st,
                    Status::BadArgument,
                    "hmac_sha2: output buffer too small",
                ));
            }
            tri!(
                st,
                memory::write(mem, out, &d),
                "hmac_sha2: output out of bounds"
            );
            Ok(Status::Ok.raw())
        },
    )?;
    l.func_wrap(
        MODULE,
        "stick_get",
        |mut c: C<'_>, tp: u32, tl: u32, kp: u32, kl: u32, dp: u32, dl: u32, ret: u32| {
            let names = [(tp, tl), (kp, kl), (dp, dl)];
            stick_call(&mut c, "stick_get", names, Some(ret), |api, t, k, d| {
                api.get(t, k, d).map(Some)
            })
        },
    )?;
    l.func_wrap(
        MODULE,
        "stick_add",
        |mut c: C<'_>,
         tp: u32,
         tl: u32,
         kp: u32,
         kl: u32,
         dp: u32,
         dl: u32,
         delta: i64,
         ret: u32| {
            let names = [(tp, tl), (kp, kl), (dp, dl)];
            stick_call(&mut c, "stick_add", names, Some(ret), |api, t, k, d| {
                api.add(t, k, d, delta).map(Some)
            })
        },
    )?;
    l.func_wrap(
        MODULE,
        "stick_set",
        |mut c: C<'_>, tp: u32, tl: u32, kp: u32, kl: u32, dp: u32, dl: u32, value: i64| {
            let names = [(tp, tl), (kp, kl), (dp, dl)];
            stick_call(&mut c, "stick_set", names, None, |api, t, k, d| {
                api.set(t, k, d, value).map(|()| None)
            })
        },
    )?;
    l.func_wrap(
        MODULE,
        "stick_clear",
        |mut c: C<'_>, tp: u32, tl: u32, kp: u32, kl: u32| -> HostResult {
            let Some((mem, st)) = mem_state(&mut c) else {
                return Ok(Status::InternalFailure.raw());
            };
            let t = tri!(
                st,
                memory::read_str(mem, tp, tl),
                "stick_clear: bad table name"
            );
            let k = tri!(st, memory::read_str(mem, kp, kl), "stick_clear: bad key");
            let api = match stick_api(st) {
                Ok(a) => a,
                Err(s) => return Ok(s),
            };
            match api.clear(t, k) {
                Ok(()) => Ok(Status::Ok.raw()),
                Err(e) => Ok(stick_status(st, e)),
            }
        },
    )?;
    l.func_wrap(
        MODULE,
        "last_error",
        |mut c: C<'_>, ret_ptr: u32, ret_size: u32| -> HostResult {
            let Some(msg) = c.data().last_error.clone() else {
                return Ok(Status::NotFound.raw());
            };
            copy_out(&mut c, msg.as_bytes(), ret_ptr, ret_size)
        },
    )?;
    Ok(())
}

/// Runs foreign function `name` on `args`; the result bytes or a status.
pub fn call_foreign(st: &mut HostState, name: &[u8], args: &[u8]) -> Result<Vec<u8>, Status> {
    let field = |list: &[(&[u8], &[u8])], key: &str| -> Result<String, Status> {
        list.iter()
            .find(|(k, _)| *k == key.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .map(str::to_string)
            .ok_or(Status::BadArgument)
    };
    let int = |list: &[(&[u8], &[u8])], key: &str| -> Result<i64, Status> {
        field(list, key)?
            .trim()
            .parse()
            .map_err(|_| Status::BadArgument)
    };
    match name {
        b"sha256" => Ok(Sha256::digest(args).to_vec()),
        b"hmac_sha256" => {
            let list = pairs::decode(args)?;
            let key = list
                .iter()
                .find(|(k, _)| *k == b"key")
                .map(|(_, v)| *v)
                .ok_or(Status::BadArgument)?;
            let data = list
                .iter()
                .find(|(k, _)| *k == b"data")
                .map(|(_, v)| *v)
                .ok_or(Status::BadArgument)?;
            hmac_sha2(256, key, data).ok_or(Status::InternalFailure)
        }
        b"stick_get" | b"stick_add" | b"stick_set" | b"stick_clear" => {
            let list = pairs::decode(args)?;
            let api = st.root.plugin.spec.stick.clone().ok_or(Status::NotFound)?;
            let table = field(&list, "table")?;
            let key = field(&list, "key")?;
            let r = match name {
                b"stick_get" => api
                    .get(&table, &key, &field(&list, "data")?)
                    .map(|v| v.to_string()),
                b"stick_add" => api
                    .add(&table, &key, &field(&list, "data")?, int(&list, "delta")?)
                    .map(|v| v.to_string()),
                b"stick_set" => api
                    .set(&table, &key, &field(&list, "data")?, int(&list, "value")?)
                    .map(|()| String::new()),
                _ => api.clear(&table, &key).map(|()| String::new()),
            };
            r.map(String::into_bytes).map_err(|e| {
                let s = match e {
                    StickFail::NotFound => Status::NotFound,
                    StickFail::BadArgument(_) => Status::BadArgument,
                    StickFail::Full(_) => Status::InternalFailure,
                };
                st.last_error = Some(e.to_string());
                s
            })
        }
        _ => Err(Status::NotFound),
    }
}

/// `proxy_call_foreign_function(name, args, ret_ptr, ret_size)`.
pub fn foreign(
    mut c: C<'_>,
    nptr: u32,
    nlen: u32,
    aptr: u32,
    alen: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> HostResult {
    let out = {
        let Some((mem, st)) = mem_state(&mut c) else {
            return Ok(Status::InternalFailure.raw());
        };
        let name = tri!(
            st,
            memory::read(mem, nptr, nlen),
            "proxy_call_foreign_function: name out of bounds"
        )
        .to_vec();
        let args = tri!(
            st,
            memory::read(mem, aptr, alen),
            "proxy_call_foreign_function: args out of bounds"
        )
        .to_vec();
        match call_foreign(st, &name, &args) {
            Ok(v) => v,
            Err(s) => return Ok(s.raw()),
        }
    };
    copy_out(&mut c, &out, ret_ptr, ret_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_vectors() {
        let d = sha2_digest(256, b"abc").expect("alg");
        assert_eq!(
            d[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(abc) starts with ba7816bf"
        );
        assert_eq!(sha2_digest(512, b"").expect("alg").len(), 64);
        assert!(sha2_digest(1, b"").is_none());
        // RFC 4231 test case 2.
        let m = hmac_sha2(256, b"Jefe", b"what do ya want for nothing?").expect("alg");
        assert_eq!(m[..4], [0x5b, 0xdc, 0xc1, 0x46]);
    }
}
