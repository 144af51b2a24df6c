"""The keys of the batches that flow from the data layer (``REC.data``) into the models and the evaluator, named
once on the ground floor so that the two sides cannot drift apart; each says what its tensor holds."""

# training batches (REC.data.training)
ITEMS = "items"                # int64 item ids: a chunk [B, M+1] (sequence models), or one item per row [B] (pairs)
NEGATIVES = "negatives"        # int64 sampled negatives, aligned with ITEMS (0 where a position has no target)
TARGET = "target"              # int64 [B] the item to predict (held-out-item training; evaluation)
TARGET_MASK = "target_mask"    # bool, aligned with ITEMS: positions that carry a training target
MASKED_ITEMS = "masked_items"  # int64 [B, M+1] BERT4Rec's input: ITEMS with the masked positions set to the mask id
SHARED_NEGATIVES = "shared_negatives"  # int64 [num_negatives]: one draw per step, the same on every process

# evaluation batches (REC.data.eval_batches) and user identity
USER_ID = "user_id"            # int64 [B] internal user ids
ITEM_SEQ = "item_seq"          # int64 [B, M] the last M history items, left-padded with 0 (the model input)
HIST_ROW = "hist_row"          # int64 [H] batch row of each history entry, for masking the ranking
HIST_ITEM = "hist_item"        # int64 [H] item of each history entry

# PixelNet: the covers of the items a batch names (REC.data.cover_batches, REC.data.prefix_cache)
COVER_IDS = "cover_ids"        # int64 [n] the distinct item ids whose covers the batch carries
COVERS = "covers"              # uint8 [n, 3, H, W] those covers
COVER_PREFIX = "cover_prefix"  # stored frozen-prefix rows of those items, instead of their covers
