-- 0007: why the latest alert after an incident closed was counted on it (the quiet period:
-- the workload had not changed since its fix), so that the incident says so; '' while no
-- alert came after the close.

ALTER TABLE incidents ADD COLUMN after_close text NOT NULL DEFAULT '';
