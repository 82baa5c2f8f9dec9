-- Argo CD health check for rlaif.dev/RLAIFJob (argocd-cm key:
-- resource.customizations.health.rlaif.dev_RLAIFJob). See docs/gitops.md.
--
-- Reads the conditions the operator writes (Running, Succeeded, Failed, Suspended, Ready, Queued,
-- each with observedGeneration) and maps them to Argo CD health. It does not need kstatus'
-- Reconciling/Stalled pair (also written), so it reads statuses written before the pair existed;
-- tests/unit/test_argocd_health.py checks that the real kstatus library agrees with it:
--   Healthy      Succeeded=True (the run finished; Ready=True)
--   Degraded     Failed=True, or the operator refuses the spec (Running=False, reason InvalidSpec)
--   Suspended    Suspended=True (spec.runPolicy.suspend: true)
--   Progressing  everything else: not yet seen by the operator, status older than the spec
--                (status.observedGeneration < metadata.generation), waiting or running a stage.
local hs = {}

local function find(conditions, ctype)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    if text ~= "" then
      text = text .. ": " .. c.message
    else
      text = c.message
    end
  end
  if text == "" then
    return fallback
  end
  return text
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for rlaif-operator to pick up the job"
  return hs
end

-- A status computed from an older spec says nothing about the current one.
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for rlaif-operator to observe generation " .. tostring(generation)
    .. " (status is for generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local conditions = status.conditions
-- So is a condition computed for an older generation (e.g. a Suspended=True left from before a resume).
if generation ~= nil then
  for _, c in ipairs(conditions) do
    if c.observedGeneration ~= nil and c.observedGeneration < generation then
      hs.status = "Progressing"
      hs.message = "Waiting for rlaif-operator to observe generation " .. tostring(generation)
        .. " (condition " .. tostring(c.type) .. " is for generation " .. tostring(c.observedGeneration) .. ")"
      return hs
    end
  end
end

local function is_true(ctype)
  local c = find(conditions, ctype)
  if c == nil or c.status ~= "True" then
    return nil
  end
  return c
end

local failed = is_true("Failed")
if failed ~= nil then
  hs.status = "Degraded"
  hs.message = describe(failed, "The job failed")
  return hs
end

local succeeded = is_true("Succeeded")
if succeeded ~= nil then
  hs.status = "Healthy"
  local message = describe(succeeded, "The job succeeded")
  if status.results ~= nil and status.results.winRateVsInitial ~= nil then
    message = message .. string.format(" (win rate vs initial policy %.3f)", status.results.winRateVsInitial)
  end
  hs.message = message
  return hs
end

local suspended = is_true("Suspended")
if suspended ~= nil then
  hs.status = "Suspended"
  hs.message = describe(suspended, "The job is suspended")
  return hs
end

local running = find(conditions, "Running")
if running ~= nil and running.status == "False" and running.reason == "InvalidSpec" then
  hs.status = "Degraded"
  hs.message = describe(running, "The operator refused the spec")
  return hs
end

hs.status = "Progressing"
local where = status.phase or "Pending"
if status.currentStage ~= nil then
  where = where .. ", stage " .. status.currentStage
end
if status.progress ~= nil then
  where = where .. " (" .. status.progress .. " stages done)"
end
if running ~= nil and running.message ~= nil and running.message ~= "" then
  hs.message = where .. ": " .. running.message
elseif running ~= nil and running.status == "False" and running.reason ~= nil and running.reason ~= "" then
  hs.message = where .. ": waiting (" .. running.reason .. ")"
else
  hs.message = where
end
return hs
