-- talk_time.lua — example: count talk time per node and per day in nexus.store (it
-- survives reloads), log the totals every hour, and keep 31 days.

local KEEP_DAYS = 31

local function add(e)
  local key = ("talk:%s:%s"):format(os.date("%Y-%m-%d"), e.node)
  nexus.store[key] = (nexus.store[key] or 0) + (e.duration_seconds or 0)
end

nexus.on("link_unkeyed", add)
nexus.on("rx_unkeyed", add)

nexus.every(3600, function()
  local oldest = os.date("%Y-%m-%d", os.time() - KEEP_DAYS * 86400)
  for key, seconds in pairs(nexus.store) do
    local day, node = key:match("^talk:(%d+%-%d+%-%d+):(.+)$")
    if day and day < oldest then
      nexus.store[key] = nil
    elseif day == os.date("%Y-%m-%d") then
      nexus.log.info(("node %s: %d minutes of talk today"):format(node, seconds // 60))
    end
  end
end)
