-- Header and URI rewriting in both phases.
--   HAProxy:    http-request lua.rewrite    http-response lua.rewrite
--   portcullis: { lua = "rewrite" } in http_request and in http_response

core.register_action("rewrite", { "http-req" }, function(txn)
  local h = txn.http:req_get_headers()
  -- Header values are 0-indexed; names are lower case.
  local ua = h["user-agent"]
  txn.http:req_set_header("x-ua-first", ua and ua[0] or "none")
  local multi = h["x-multi"]
  local n = 0
  if multi then for _ in pairs(multi) do n = n + 1 end end
  txn.http:req_set_header("x-multi-count", tostring(n))
  txn.http:req_add_header("x-added", "one")
  txn.http:req_add_header("x-added", "two")
  txn.http:req_del_header("x-remove-me")
  txn.http:req_rep_header("x-version", "^v([0-9]+)$", "version-\\1")
  txn.http:req_set_header("x-orig-path", txn.f:path())
  txn.http:req_set_path("/rewritten" .. txn.f:path())
  txn.http:req_set_query("a=1&b=2")
  return act.CONTINUE
end)

core.register_action("rewrite", { "http-res" }, function(txn)
  local h = txn.http:res_get_headers()
  txn.http:res_set_header("x-backend", h["x-server"] and h["x-server"][0] or "?")
  txn.http:res_del_header("x-secret")
  txn.http:res_del_header("x-server")
  txn.http:res_add_header("x-status-seen", txn.sf:status())
  txn.http:res_set_status(203)
  return act.CONTINUE
end)
