-- HAProxy's filter classes (2.5+): the `filter` table, core.register_filter,
-- the Channel and HTTPMessage objects, and txn.req/res/http_req/http_res in
-- filter callbacks. Runs once per state after the prelude. `P` holds the
-- API's Rust functions, `F` the filter primitives (api/filter.rs), `txn` the
-- request object. Returns the dispatcher and the per-declaration set-up the
-- host calls (api/filter.rs stores them in the registry).
local P, F, txn, ERR = ...
local type, error, setmetatable, getmetatable, pairs, tostring, mtype =
  type, error, setmetatable, getmetatable, pairs, tostring, math.type

local wrap = P.wrap
for k, f in pairs(F) do
  if type(f) == "function" then F[k] = wrap(f) end
end
local HTTP = P.http

local function bad(n, fname, expected, v)
  error("bad argument #" .. n .. " to '" .. fname .. "' (" .. expected .. " expected, got " .. type(v) .. ")", 3)
end

core.register_filter = function(name, class, fn)
  F.register(name, class, fn)
end

-- filter ---------------------------------------------------------------------
filter = { CONTINUE = 1, WAIT = 0, ERROR = -1, FLT_CFG_FL_HTX = 1 }

local function channel_dir(chn, fname)
  if type(chn) ~= "table" or chn.__chn == nil then bad(2, fname, "Channel", chn) end
  return chn.__chn
end

function filter.register_data_filter(flt, chn)
  if type(flt) ~= "table" then bad(1, "register_data_filter", "table", flt) end
  F.register_data(channel_dir(chn, "register_data_filter"), true)
end

function filter.unregister_data_filter(flt, chn)
  if type(flt) ~= "table" then bad(1, "unregister_data_filter", "table", flt) end
  F.register_data(channel_dir(chn, "unregister_data_filter"), false)
end

function filter.wake_time(a, b)
  local ms = a
  if a == filter then ms = b end
  if mtype(ms) ~= "integer" then bad(1, "wake_time", "integer", ms) end
  F.wake_time(ms)
end

-- Channel (HTTP mode: only the informational methods) ------------------------
local Channel = {}
Channel.__index = Channel
function Channel:is_resp() return self.__chn end
function Channel:input() return F.state("input", self.__chn) end
function Channel:output() return F.state("output", self.__chn) end
function Channel:is_full() return F.state("is_full", self.__chn) end
function Channel:may_recv() return F.state("may_recv", self.__chn) end
Channel.get_in_len = Channel.input
Channel.get_out_len = Channel.output
for _, m in pairs({ "get", "dup", "getline", "set", "append", "prepend", "insert",
                    "remove", "send", "forward", "data", "line" }) do
  Channel[m] = function()
    error("Cannot manipulate HAProxy channels in HTTP mode.", 2)
  end
end
local REQ = setmetatable({ __chn = false }, Channel)
local RES = setmetatable({ __chn = true }, Channel)

-- HTTPMessage ----------------------------------------------------------------
local Msg = {}
Msg.__index = Msg

-- Header and start-line changes: only before the payload (HAProxy raises an
-- error once the message is past its headers).
local function headers_open(self, fname)
  local st = F.stage()
  if st ~= "headers" and st ~= "analyze" and st ~= "setup" then
    error("'" .. fname .. "' cannot be used once the headers are forwarded (only in start_analyze and http_headers)", 3)
  end
end
local function pre(self) if self.__resp then return "res_" end return "req_" end

function Msg:is_resp() return self.__resp end
function Msg:input() return F.state("input", self.__resp) end
function Msg:output() return F.state("output", self.__resp) end
function Msg:eom() return F.state("eom", self.__resp) end
function Msg:is_full() return F.state("is_full", self.__resp) end
function Msg:may_recv() return F.state("may_recv", self.__resp) end
function Msg:set_eom() F.set_eom(self.__resp, true) end
function Msg:unset_eom() F.set_eom(self.__resp, false) end
function Msg:get_stline() headers_open(self, "get_stline"); return F.stline(self.__resp) end
function Msg:get_headers()
  headers_open(self, "get_headers")
  return HTTP[pre(self) .. "get_headers"](HTTP)
end
function Msg:add_header(name, value)
  headers_open(self, "add_header")
  HTTP[pre(self) .. "add_header"](HTTP, name, value)
end
function Msg:set_header(name, value)
  headers_open(self, "set_header")
  HTTP[pre(self) .. "set_header"](HTTP, name, value)
end
function Msg:del_header(name)
  headers_open(self, "del_header")
  HTTP[pre(self) .. "del_header"](HTTP, name)
end
function Msg:rep_header(name, regex, replace)
  headers_open(self, "rep_header")
  HTTP[pre(self) .. "rep_header"](HTTP, name, regex, replace)
end
function Msg:rep_value(name, regex, replace)
  headers_open(self, "rep_value")
  HTTP[pre(self) .. "rep_value"](HTTP, name, regex, replace)
end
local function req_only(self, fname)
  if self.__resp then error("'" .. fname .. "' only applies to the request", 3) end
  headers_open(self, fname)
end
function Msg:set_method(m) req_only(self, "set_method"); HTTP.req_set_method(HTTP, m); return true end
function Msg:set_path(p) req_only(self, "set_path"); HTTP.req_set_path(HTTP, p); return true end
function Msg:set_query(q) req_only(self, "set_query"); HTTP.req_set_query(HTTP, q); return true end
function Msg:set_uri(u) req_only(self, "set_uri"); HTTP.req_set_uri(HTTP, u); return true end
function Msg:set_status(code, reason)
  if not self.__resp then error("'set_status' only applies to the response", 2) end
  headers_open(self, "set_status")
  HTTP.res_set_status(HTTP, code, reason)
  return true
end
function Msg:body(offset, length) return F.body(self.__resp, offset, length) end
function Msg:insert(s, offset) return F.insert(self.__resp, s, offset, "at") end
function Msg:append(s) return F.insert(self.__resp, s, nil, "end") end
function Msg:prepend(s) return F.insert(self.__resp, s, nil, "front") end
function Msg:remove(offset, length) return F.remove(self.__resp, offset, length) end
function Msg:set(s, offset, length) return F.set(self.__resp, s, offset, length) end
function Msg:send(s) return F.send(self.__resp, s) end
function Msg:forward(n) return F.forward(self.__resp, n) end
local HTTP_REQ = setmetatable({ __resp = false, channel = REQ }, Msg)
local HTTP_RES = setmetatable({ __resp = true, channel = RES }, Msg)

-- txn.req / txn.res are the channels (as in HAProxy's actions too);
-- txn.http_req / txn.http_res exist in filter callbacks only.
local channels = { req = REQ, res = RES }
local in_filter = { http_req = HTTP_REQ, http_res = HTTP_RES }
local TXN = getmetatable(txn).__index
local tmt = getmetatable(TXN)
local fallback = tmt.__index
tmt.__index = function(t, k)
  local c = channels[k]
  if c ~= nil then return c end
  local o = in_filter[k]
  if o ~= nil and F.stage() ~= nil then return o end
  return fallback(t, k)
end

-- Host entry points ------------------------------------------------------------
-- call: runs callback `name` of filter instance `obj` with txn and the
-- channel (kind "chn") or HTTP message (kind "msg") of the direction;
-- returns false when the instance has no such function, else true and its results.
local function call(obj, name, resp, kind)
  local fn = obj[name]
  if type(fn) ~= "function" then return false end
  local arg
  if kind == "chn" then
    arg = resp and RES or REQ
  else
    arg = resp and HTTP_RES or HTTP_REQ
  end
  return true, fn(obj, txn, arg)
end

-- conf: the class as configured by one `filters` entry (HAProxy copies the
-- class for each `filter` line and hands the copy to the registration
-- function), then a new instance for one stream (nil: not attached).
local confs = {}
local function new(id, class, fn, args, http)
  -- Without filter.FLT_CFG_FL_HTX (read from the registered class, as
  -- HAProxy does) a filter is not attached to HTTP streams; TCP streams
  -- take every filter.
  local flags = math.tointeger(class.flags)
  if http and (flags == nil or flags & filter.FLT_CFG_FL_HTX == 0) then return nil end
  local c = confs[id]
  if c == nil then
    c = {}
    for k, v in pairs(class) do c[k] = v end
    fn(c, args)
    confs[id] = c
  end
  local ctor = c.new
  if type(ctor) ~= "function" then
    error("'new' field is not a function", 0)
  end
  local o = ctor(c)
  if type(o) ~= "table" then return nil end
  return o
end

return call, new, Channel, F
