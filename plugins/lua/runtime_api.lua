-- HAProxy's smaller runtime APIs, answered with txn:reply so that both
-- proxies' answers can be compared byte for byte (tests/e2e_lua_haproxy.rs):
-- core.set_map / del_map / add_acl / del_acl on a loaded map file,
-- core.get_info(), core.concat(), txn.http:req_set_uri / req_set_path /
-- req_set_query, and AppletHTTP:receive(n) / getline().
--   HAProxy:    http-request lua.runtime_map if { path_beg /rmap }
--   portcullis: { lua = "runtime_map", if = "path_beg /rmap" }

local map = Map.new("maps/runtime.map", Map._str)
local prefixes = Map.new("maps/runtime.map", Map._beg)

-- Error text without the "file:line: " HAProxy and portcullis put differently.
local function msg(e)
  return (tostring(e):gsub("^[^:]*:%d+: ", ""))
end

local function answer(txn, body)
  txn:done(txn:reply({ status = 200, headers = { ["content-type"] = { "text/plain" } }, body = body }))
end

-- x-op: set|del|add|delacl|unknown, x-k: key, x-v: value; answers the
-- lookups of the key afterwards.
core.register_action("runtime_map", { "http-req" }, function(txn)
  local op, k, v = txn.sf:req_hdr("x-op"), txn.sf:req_hdr("x-k"), txn.sf:req_hdr("x-v")
  local ok, e = true, nil
  if op == "set" then ok, e = pcall(core.set_map, "maps/runtime.map", k, v)
  elseif op == "del" then ok, e = pcall(core.del_map, "maps/runtime.map", k)
  elseif op == "add" then ok, e = pcall(core.add_acl, "maps/runtime.map", k)
  elseif op == "delacl" then ok, e = pcall(core.del_acl, "maps/runtime.map", k)
  elseif op == "unknown" then ok, e = pcall(core.set_map, "maps/nowhere.map", k, v)
  elseif op == "nargs" then ok, e = pcall(core.del_map, "maps/runtime.map")
  end
  answer(txn, string.format("op=%s ok=%s err=%s\nstr=%s\nbeg=%s\nslookup=[%s]\n", op, tostring(ok),
    ok and "-" or msg(e), tostring(map:lookup(k)), tostring(prefixes:lookup(k .. "/more")), map:slookup(k)))
end)

-- Keys both proxies report, with the Lua type of each value.
local INFO_KEYS = { "Name", "Version", "Uptime", "Uptime_sec", "Pid", "Nbthread", "Nbproc", "Process_num",
  "Maxconn", "Hard_maxconn", "CurrConns", "CumConns", "CumReq", "Listeners", "Start_time_sec", "Tainted",
  "Build info", "CurrSslConns", "CumSslConns", "MaxSslConns", "Maxpipes", "PipesUsed", "PipesFree",
  "CompressBpsIn", "CompressBpsOut", "ConnRateLimit", "SessRateLimit", "SslRateLimit", "ActivePeers",
  "ConnectedPeers", "CumRecvLogs", "FailedResolutions", "BusyPolling", "DebugCommandsIssued" }

core.register_action("runtime_info", { "http-req" }, function(txn)
  local t = core.get_info()
  local out = {}
  for _, k in ipairs(INFO_KEYS) do
    local v = t[k]
    out[#out + 1] = k .. "=" .. (math.type(v) or type(v))
  end
  out[#out + 1] = "pid_matches=" .. tostring(t.Pid > 0)
  out[#out + 1] = "cum_req_positive=" .. tostring(t.CumReq > 0)
  out[#out + 1] = "uptime_format=" .. tostring(t.Uptime:match("^%d+d %d+h%d%dm%d%ds$") ~= nil)
  out[#out + 1] = "ssl=" .. t.CurrSslConns .. "," .. t.CumSslConns .. " pipes=" .. t.Maxpipes
  answer(txn, table.concat(out, "\n") .. "\n")
end)

core.register_action("runtime_concat", { "http-req" }, function(txn)
  local c = core.concat()
  c:add("a")
  c:add(1)
  c:add("-")
  local first = c:dump()
  c:add(txn.f:path())
  local out = { first, c:dump(), c:dump(), tostring(c):match("^Concat object: ") and "tostring ok" or tostring(c) }
  for _, f in ipairs({ function() c:add() end, function() c:add({}) end, function() c:add(nil) end }) do
    local ok, e = pcall(f)
    out[#out + 1] = tostring(ok) .. " " .. msg(e)
  end
  out[#out + 1] = "[" .. core.concat():dump() .. "]"
  answer(txn, table.concat(out, "\n") .. "\n")
end)

-- x-f: req_set_uri|req_set_path|req_set_query, x-v: the value ("EMPTY" for "").
core.register_action("runtime_uri", { "http-req" }, function(txn)
  local f, v = txn.sf:req_hdr("x-f"), txn.sf:req_hdr("x-v")
  if v == "EMPTY" then v = "" end
  local r = txn.http[f](txn.http, v)
  answer(txn, string.format("ret=%s\nurl=%s\npath=%s\nquery=%s\nhost=%s\n", tostring(r), txn.sf:url(),
    tostring(txn.f:path()), tostring(txn.f:query()), txn.sf:req_hdr("host")))
end)

-- The query lists the reads: "line" (getline), "all" (receive()), "nil",
-- "flt", "str", "word", "two" (receive with nil, 2.5, "2", "two", (1, 2))
-- or a length for receive(n).
-- HAProxy 2.6 answers "" to receive(n) before the first getline, so every
-- list starts with one.
core.register_service("runtime_recv", "http", function(applet)
  local out = {}
  for tok in applet.qs:gmatch("[^,]+") do
    local ok, r
    if tok == "line" then ok, r = pcall(function() return applet:getline() end)
    elseif tok == "all" then ok, r = pcall(function() return applet:receive() end)
    elseif tok == "nil" then ok, r = pcall(function() return applet:receive(nil) end)
    elseif tok == "flt" then ok, r = pcall(function() return applet:receive(2.5) end)
    elseif tok == "str" then ok, r = pcall(function() return applet:receive("2") end)
    elseif tok == "word" then ok, r = pcall(function() return applet:receive("two") end)
    elseif tok == "two" then ok, r = pcall(function() return applet:receive(1, 2) end)
    else
      local n = tonumber(tok)
      ok, r = pcall(function() return applet:receive(n) end)
    end
    out[#out + 1] = tok .. "=" .. (ok and ("[" .. r .. "]") or ("error " .. msg(r)))
  end
  local body = table.concat(out, "\n") .. "\n"
  applet:set_status(200)
  applet:add_header("content-type", "text/plain")
  applet:add_header("content-length", tostring(#body))
  applet:start_response()
  applet:send(body)
end)
