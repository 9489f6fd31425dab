-- Server and Proxy objects: a service that changes a server's state and
-- reports every backend's servers as HAProxy's Lua API shows them.
--
--   GET /servers                          report only
--   GET /servers?op=set_maint&srv=s1      call srv:set_maint() first
--   GET /servers?op=set_weight&srv=s1&arg=50%25
--
-- Only the HAProxy 2.6 API is used here, so the same script runs under
-- HAProxy 2.6 and portcullis (tests/e2e_lua_servers.rs compares them).

local function query(qs)
  local q = {}
  for k, v in string.gmatch(qs or "", "([^&=]+)=([^&]*)") do
    q[k] = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  end
  return q
end

-- HAProxy 2.6 answers is_draining() with 0/1, 2.8 with a boolean.
local function truthy(v) return v == true or v == 1 end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local STAT_KEYS = { "pxname", "svname", "status", "weight", "act", "bck", "type", "sid", "scur", "qcur", "chkdown" }
local PROXY_STAT_KEYS = { "pxname", "svname", "status", "weight", "act", "bck", "type" }

local function stats_line(st, keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = k .. "=" .. tostring(st[k]) end
  return table.concat(out, " ")
end

local function report(lines, px_name)
  local px = core.backends[px_name]
  lines[#lines + 1] = string.format("proxy %s cap=%s mode=%s %s", px.name, px:get_cap(), px:get_mode(),
    stats_line(px:get_stats(), PROXY_STAT_KEYS))
  for _, name in ipairs(sorted_keys(px.servers)) do
    local srv = px.servers[name]
    local st = srv:get_stats()
    lines[#lines + 1] = string.format("  server %s puid=%s addr=%s weight=%s draining=%s %s check=%s",
      srv.name, tostring(srv.puid), srv:get_addr(), tostring(srv:get_weight()), tostring(truthy(srv:is_draining())),
      -- HAProxy prefixes "* " while a check runs: timing, not state.
      stats_line(st, STAT_KEYS), (tostring(st.check_status):gsub("^%* ", "")))
  end
end

core.register_service("servers", "http", function(applet)
  local q = query(applet.qs)
  local lines = {}
  if q.op then
    local px = core.backends[q.px or "pool"]
    local srv = px and px.servers[q.srv or ""]
    if not srv then
      lines[#lines + 1] = "no such server " .. tostring(q.srv)
    else
      local r = srv[q.op](srv, q.arg)
      lines[#lines + 1] = string.format("%s(%s) -> %s", q.op, tostring(q.arg), tostring(r))
    end
  end
  for _, px in ipairs({ "pool", "hashed", "checked" }) do report(lines, px) end
  local fe = core.frontends["web"]
  lines[#lines + 1] = string.format("frontend %s cap=%s %s", fe.name, fe:get_cap(),
    stats_line(fe:get_stats(), { "pxname", "svname", "status", "type" }))
  local body = table.concat(lines, "\n") .. "\n"
  applet:set_status(200)
  applet:add_header("content-type", "text/plain")
  applet:start_response()
  applet:send(body)
end)
