-- Variables across the request and response phases (txn., req., res.,
-- sess. and proc. scopes), private data and core.msleep.
--   HAProxy:    http-request lua.vars_req    http-response lua.vars_res
--   portcullis: { lua = "vars_req" } / { lua = "vars_res" }

core.register_action("vars_req", { "http-req" }, function(txn)
  txn:set_var("txn.path", txn.f:path())
  txn:set_var("txn.n", 41)
  txn:set_var("req.only", "request")
  txn:set_var("txn.gone", "x")
  txn:unset_var("txn.gone")
  local hits = txn:get_var("proc.lua_hits") or 0
  txn:set_var("proc.lua_hits", hits + 1)
  txn:set_priv({ at = "request" })
  txn.http:req_set_header("x-req-only", tostring(txn:get_var("req.only")))
  local before = core.now()
  core.msleep(30)
  local after = core.now()
  local ms = (after.sec - before.sec) * 1000 + (after.usec - before.usec) // 1000
  txn.http:req_set_header("x-slept", ms >= 25 and "yes" or ("no:" .. ms))
  return act.CONTINUE
end)

core.register_action("vars_res", { "http-res" }, function(txn)
  txn:set_var("res.code", txn.f:status())
  local priv = txn:get_priv()
  txn.http:res_set_header("x-var-path", tostring(txn:get_var("txn.path")))
  txn.http:res_set_header("x-var-n", tostring(txn:get_var("txn.n") + 1))
  txn.http:res_set_header("x-var-req", tostring(txn:get_var("req.only")))
  txn.http:res_set_header("x-var-res", tostring(txn:get_var("res.code")))
  txn.http:res_set_header("x-var-gone", tostring(txn:get_var("txn.gone")))
  txn.http:res_set_header("x-var-proc", tostring(txn:get_var("proc.lua_hits")))
  txn.http:res_set_header("x-priv", priv and priv.at or "none")
  return act.CONTINUE
end)
