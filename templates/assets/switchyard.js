/* switchyard dashboard client (in progress) */
