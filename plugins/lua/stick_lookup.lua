-- Reads the stick table `per_ip` (tracked by the config) for the client.
--   HAProxy:    backend per_ip
--                 stick-table type ip size 1k expire 60s store http_req_cnt,gpc0
--               http-request track-sc0 src table per_ip
--               http-response lua.stick_lookup
--   portcullis: [[stick_table]] name = "per_ip" ... and
--               { track_sc0 = "src", table = "per_ip" } / { lua = "stick_lookup" }

core.register_action("stick_lookup", { "http-res" }, function(txn)
  local st = core.backends["per_ip"].stktable
  local e = st:lookup(txn.f:src())
  local info = st:info()
  txn.http:res_set_header("x-st-type", info.type)
  txn.http:res_set_header("x-st-size", tostring(info.size))
  txn.http:res_set_header("x-st-used", tostring(info.used))
  txn.http:res_set_header("x-st-data", "gpc0=" .. tostring(info.data.gpc0) .. " http_req_cnt=" .. tostring(info.data.http_req_cnt))
  if e then
    txn.http:res_set_header("x-st-req-cnt", tostring(e.http_req_cnt))
    txn.http:res_set_header("x-st-gpc0", tostring(e.gpc0))
  else
    txn.http:res_set_header("x-st-req-cnt", "none")
  end
  txn.http:res_set_header("x-st-missing", tostring(st:lookup("192.0.2.1")))
  local n = 0
  for _ in pairs(st:dump()) do n = n + 1 end
  txn.http:res_set_header("x-st-dump", tostring(n))
  return act.CONTINUE
end)
