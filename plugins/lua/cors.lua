-- CORS (cross-origin resource sharing) for HAProxy and portcullis.
--
-- Request phase, with three arguments: allowed methods, allowed origins
-- ("*" or a comma-separated list) and allowed request headers:
--   HAProxy:    http-request lua.cors "GET,POST" "https://a.example,https://b.example" "X-Custom"
--   portcullis: { lua = "cors", args = ["GET,POST", "https://a.example,https://b.example", "X-Custom"] }
-- Response phase, no argument:
--   HAProxy:    http-response lua.cors
--   portcullis: { lua = "cors" }
--
-- A preflight (OPTIONS with Origin and Access-Control-Request-Method) is
-- answered at once with 204; other requests go on, and their response gets
-- Access-Control-Allow-Origin when the origin is allowed.

local function allowed_origin(origin, origins)
  for _, o in ipairs(core.tokenize(origins, ", ", true)) do
    if o == "*" then return "*" end
    if o:lower() == origin:lower() then return origin end
  end
  return nil
end

core.register_action("cors", { "http-req" }, function(txn, methods, origins, headers)
  local h = txn.http:req_get_headers()
  local origin = h["origin"] and h["origin"][0]
  if origin == nil then return act.CONTINUE end
  local allow = allowed_origin(origin, origins)
  -- Remembered for the response phase (empty: origin refused).
  txn:set_var("txn.cors_origin", allow or "")
  if txn.f:method() == "OPTIONS" and h["access-control-request-method"] then
    local reply = txn:reply({ status = 204 })
    if allow then
      reply:add_header("access-control-allow-origin", allow)
      reply:add_header("access-control-allow-methods", methods)
      reply:add_header("access-control-allow-headers", headers)
      reply:add_header("access-control-max-age", "600")
    end
    reply:add_header("vary", "Origin")
    txn:done(reply)
  end
  return act.CONTINUE
end, 3)

core.register_action("cors", { "http-res" }, function(txn)
  local allow = txn:get_var("txn.cors_origin")
  if allow == nil then return act.CONTINUE end
  if allow ~= "" then
    txn.http:res_set_header("access-control-allow-origin", allow)
    txn.http:res_set_header("access-control-expose-headers", "x-server")
  end
  txn.http:res_add_header("vary", "Origin")
  return act.CONTINUE
end)
