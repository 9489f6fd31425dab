-- bench scenario `lua-headers`: one header read and one header set per request.
core.register_action("bench_headers", { "http-req" }, function(txn)
  local h = txn.http:req_get_headers()
  local v = h["x-bench-set"]
  txn.http:req_set_header("x-bench-set", "lua:" .. (v and v[0] or "none"))
end)
