"""From files on disk to training arrays: readers, repairs, masks, splits, augmentation."""
