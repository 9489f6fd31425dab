-- An HTTP service (AppletHTTP). Sends a Content-Length when the query
-- asks for it (cl=1); otherwise the response is chunked.
--   HAProxy:    http-request use-service lua.hello if { path_beg /svc }
--   portcullis: { use_service = "lua.hello", if = "path_beg /svc" }

core.register_service("hello", "http", function(applet)
  local body = "hello " .. applet.method .. " " .. applet.path .. "?" .. applet.qs .. "\n"
  local name = applet.headers["x-name"]
  if name then body = body .. "name=" .. name[0] .. "\n" end
  body = body .. "from=" .. applet.sf:src() .. "\n"
  applet:set_status(200)
  applet:add_header("content-type", "text/plain")
  applet:add_header("x-service", "hello")
  if applet.qs:find("cl=1", 1, true) then
    applet:add_header("content-length", tostring(#body))
  end
  applet:start_response()
  -- Two sends: the body goes out in pieces.
  local half = #body // 2
  applet:send(body:sub(1, half))
  applet:send(body:sub(half + 1))
end)

-- Reads the request body: the first line, three bytes, then the rest.
--   HAProxy:    http-request use-service lua.body_echo if { path_beg /body }
--   portcullis: { use_service = "lua.body_echo", if = "path_beg /body" }
core.register_service("body_echo", "http", function(applet)
  local line = applet:getline()
  local three = applet:receive(3)
  local rest = applet:receive()
  local after = applet:receive()
  local out = string.format("length=%d\nline=[%s]\nthree=[%s]\nrest=[%s]\nafter=[%s]\n",
    applet.length, line, three, rest, after)
  applet:set_status(200)
  applet:add_header("content-type", "text/plain")
  applet:start_response()
  applet:send(out)
end)
