-- A HAProxy 2.5+ Lua filter (core.register_filter): on requests whose path
-- starts with /filter/ (or with filter=upper in the query), it
--   * rewrites request headers in http_headers (start line in x-filter-*),
--   * counts and rewrites the request body in http_payload (line -> LINE),
--   * reports the request body length and its configuration arguments on
--     the response, in http_headers,
--   * rewrites the response body in http_payload, keeping its length
--     (/filter/swap: filter -> FILTER; /filter/upper: upper case),
--   * answers filter.ERROR (/filter/deny) or filter.WAIT once (/filter/wait).
--
-- HAProxy:     filter lua.body_filter tag-a tag-b
-- portcullis:  filters = [{ lua = "body_filter", args = ["tag-a", "tag-b"] }]

BodyFilter = {}
BodyFilter.id = "body filter example"
BodyFilter.flags = filter.FLT_CFG_FL_HTX
BodyFilter.__index = BodyFilter

-- `self` is the class as configured for one `filter` line (HAProxy hands a
-- copy of BodyFilter to the registration function below).
function BodyFilter:new()
  local o = { req_len = 0, res_len = 0, waits = 0, args = self.args }
  return setmetatable(o, BodyFilter)
end

function BodyFilter:start_analyze(txn, chn)
  if not chn:is_resp() then
    local path = txn.sf:path()
    self.on = path:sub(1, 8) == "/filter/"
    self.mode = path:sub(9)
    if (txn.sf:query() or ""):find("filter=upper", 1, true) then
      self.on, self.mode = true, "upper"
    end
  end
  if self.on then
    filter.register_data_filter(self, chn)
  end
end

function BodyFilter:http_headers(txn, msg)
  if not self.on then return filter.CONTINUE end
  local sl = msg:get_stline()
  if msg:is_resp() then
    msg:set_header("x-filter-req-body", tostring(self.req_len))
    msg:set_header("x-filter-code", sl.code .. " " .. sl.reason .. " " .. sl.version)
    msg:set_header("x-filter-args", table.concat(self.args, ","))
    msg:set_header("x-filter-waits", tostring(self.waits))
    msg:del_header("x-secret")
    return filter.CONTINUE
  end
  if self.mode == "deny" then
    return filter.ERROR
  end
  if self.mode == "wait" and self.waits == 0 then
    self.waits = 1
    filter.wake_time(20)
    return filter.WAIT
  end
  local hdrs = msg:get_headers()
  local ua = hdrs["user-agent"] and hdrs["user-agent"][0] or "none"
  msg:set_header("x-filter-method", sl.method .. " " .. sl.version)
  msg:set_header("x-filter-uri", sl.uri)
  msg:add_header("x-filter-ua", ua)
  msg:del_header("x-drop-me")
  msg:rep_header("x-version", "^v([0-9]+)$", "version-\\1")
  return filter.CONTINUE
end

function BodyFilter:http_payload(txn, msg)
  local body = msg:body()
  if body == nil then return end
  if msg:is_resp() then
    self.res_len = self.res_len + #body
    if self.mode == "upper" then
      msg:set(body:upper())
    elseif self.mode == "swap" then
      msg:set((body:gsub("filter", "FILTER")))
    end
  else
    self.req_len = self.req_len + #body
    msg:set((body:gsub("line", "LINE")))
  end
end

function BodyFilter:http_end(txn, msg)
  return filter.CONTINUE
end

core.register_filter("body_filter", BodyFilter, function(class, args)
  class.args = args
  return class
end)
