-- A custom deny page with txn:reply.
--   HAProxy:    http-request lua.deny_page if { path_beg /admin }
--   portcullis: { lua = "deny_page", if = "path_beg /admin" }

core.register_action("deny_page", { "http-req" }, function(txn)
  local reply = txn:reply({
    status = 403,
    headers = { ["content-type"] = { "text/html; charset=utf-8" }, ["cache-control"] = { "no-store" } },
    body = "<html><body><h1>403</h1><p>No access to " .. txn.f:path() .. "</p></body></html>\n",
  })
  reply:add_header("x-denied-by", "lua")
  txn:done(reply)
end)
