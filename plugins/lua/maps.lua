-- Routing and classification with HAProxy's Map class: one map file per
-- match method, loaded once while the script loads, looked up per request.
-- Relative paths: portcullis resolves them against this script's directory,
-- HAProxy against its working directory (run it from plugins/lua/).
--   HAProxy:    http-request lua.maps
--   portcullis: { lua = "maps" }

local hosts   = Map.new("maps/hosts.map")            -- Map._str is the default
local paths   = Map.new("maps/paths.map", Map._beg)
local nets    = Map.new("maps/nets.map", Map._ip)
local agents  = Map.new("maps/agents.map", Map._sub)
local exts    = Map.new("maps/exts.map", Map._end)
local dirs    = Map.new("maps/dirs.map", Map._dir)
local domains = Map.new("maps/domains.map", Map._dom)
local codes   = Map.new("maps/codes.map", Map.int)   -- the names without "_" work too
local regs    = Map.new("maps/regs.map", Map._reg)

-- The message of a failing call, without its "file:line: " location.
local function err(f)
  local ok, e = pcall(f)
  if ok then return "no error" end
  return (tostring(e):gsub("^.-:%d+: ", ""))
end

core.register_action("maps", { "http-req" }, function(txn)
  local f, h = txn.sf, txn.http
  local path = (f:path():gsub("^/maps", ""))
  local set = function(name, v) h:req_set_header(name, tostring(v)) end
  set("x-map-host", hosts:slookup(f:req_hdr("x-host")))
  set("x-map-path", paths:slookup(path))
  set("x-map-ext", exts:slookup(path))
  set("x-map-dir", dirs:slookup(path))
  set("x-map-reg", regs:slookup(path))
  set("x-map-agent", agents:slookup(f:req_hdr("user-agent")))
  set("x-map-domain", domains:slookup(f:req_hdr("x-host")))
  set("x-map-net", nets:slookup(f:src()) .. "|" .. nets:slookup(f:req_hdr("x-ip")))
  local code = f:req_hdr("x-code")
  if code ~= "" then
    -- An integer map takes a number, or a string holding one.
    set("x-map-code", tostring(codes:lookup(tonumber(code))) .. "|" .. tostring(codes:lookup(code)))
  end
  set("x-map-missing", tostring(hosts:lookup("nope.example")) .. "|" .. hosts:slookup("nope.example") .. "|" .. tostring(hosts:lookup(42)))
  set("x-map-consts", table.concat({ Map._str, Map._beg, Map._sub, Map._dir, Map._dom, Map._end, Map._reg, Map._int, Map._ip, Map.str }, ","))
  set("x-map-type", type(hosts))
  set("x-map-errs", table.concat({
    err(function() local v = hosts:lookup() return v end),
    err(function() local v = hosts:lookup("a", "b") return v end),
    err(function() local v = hosts:lookup({}) return v end),
    err(function() local v = codes:lookup("x") return v end),
    err(function() local v = codes:lookup(2.5) return v end),
  }, " / "))
  return act.CONTINUE
end)
